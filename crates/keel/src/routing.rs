//! Bindings and URL prefixes to apps, with HTTP.sys precedence.
