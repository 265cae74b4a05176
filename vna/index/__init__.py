"""The metadata index: schema, engine set-up and migrations."""
