"""The gateway's blueprints, one concern each."""
