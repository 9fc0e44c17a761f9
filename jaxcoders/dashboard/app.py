"""The Streamlit script of the dashboard: `streamlit run jaxcoders/dashboard/app.py` with the spec in
$JAXCODERS_DASHBOARD_SPEC (what `experiments/dashboard.py` does; tests run it with Streamlit's
`AppTest.from_file`). All of it lives in `jaxcoders.dashboard.page.main`."""
from jaxcoders.dashboard.page import main

if __name__ == "__main__":
    main()
