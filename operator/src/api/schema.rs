//! Hand-written schema pieces where the derived one is not what the API server needs.

use schemars::{Schema, SchemaGenerator, json_schema};

/// An object the API server keeps as given. Used for the embedded pod template: its full
/// OpenAPI schema would make the CRD several hundred kilobytes and every fleet update
/// slower to validate, while the pods made from it are validated anyway.
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A non-negative count or a percentage string such as `25%`.
pub fn count_or_percent(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "x-kubernetes-validations": [{
            "rule": "type(self) == int ? self >= 0 : self.matches('^[0-9]{1,3}%$')",
            "message": "must be a non-negative count or a percentage such as 25%",
        }],
    })
}
