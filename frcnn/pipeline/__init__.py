"""The pipeline's stages, one module each (`download` ... `report`): `run(cfg, inputs, outputs)`
and the `frcnn <stage>` command that `stages/<stage>.py` and the CLI share; `tracking` (MLflow)."""
