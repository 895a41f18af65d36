"""Results: typed records, queries over a study, the envelope, reports, MLflow tracking, exports."""
