"""Export and import of telescope state as Redis RDB files and DUMP payloads."""
