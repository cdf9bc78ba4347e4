"""The run configuration: `schema` (the dataclasses and choice lists), `loading` (YAML, presets, `base:`,
`key=value` overrides, value types) and `validation` (choices, ranges, the rules between keys)."""
