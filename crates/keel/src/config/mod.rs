//! keel.toml: model, loading, validation with file:line, embedded default.
