"""Writes of the verification workflow, one module per stage (actions and assignment, reviews,
rounds and the verified layer, adjudication, settings)."""
