"""The one state store: SQLite in the state directory."""
