"""Floor 2, the source: find the members of release zips (or extracted trees), read them fast and
checked, and decode each ``.pt`` safely into a record. Imports only the ground floor."""
