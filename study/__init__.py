"""The study driver: CLI, frozen configs, Ray Tune wiring, MLflow logging and parquet export."""
