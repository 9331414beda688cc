"""Apache Airflow provider for Microsoft Power Automate Desktop flows."""
