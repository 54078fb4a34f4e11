//! The Match name for an event id: deterministic, so a redelivered or republished event
//! names the same Match and its create answers AlreadyExists instead of making a second.

use sha2::{Digest, Sha256};

/// Longest name we produce: a DNS-1123 label, valid for any resource name.
pub const MAX_NAME: usize = 63;
/// Hex digits of the hash suffix: 64 bits, so two ids colliding is not a practical concern.
const HASH_HEX: usize = 16;

/// The id itself when it already is a DNS-1123 label (lowercase alphanumerics and `-`,
/// alphanumeric at both ends, at most 63 characters), so names stay readable. Any other
/// id gets a readable prefix made safe, then `-` and a hash of the whole original id:
/// two ids that clean up to the same prefix (`A_1`, `a-1`) still differ.
pub fn match_name(event_id: &str) -> String {
    if is_dns_label(event_id) {
        return event_id.to_owned();
    }
    let mut prefix = String::with_capacity(event_id.len());
    for c in event_id.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            prefix.push(c);
        } else if !prefix.ends_with('-') && !prefix.is_empty() {
            prefix.push('-');
        }
    }
    prefix.truncate(MAX_NAME - HASH_HEX - 1);
    while prefix.ends_with('-') {
        prefix.pop();
    }
    let digest = Sha256::digest(event_id.as_bytes());
    let hash: String = digest
        .iter()
        .take(HASH_HEX / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    if prefix.is_empty() {
        format!("m-{hash}")
    } else {
        format!("{prefix}-{hash}")
    }
}

pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|b| edge(b) || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_deterministic_and_distinct() {
        let long = "x".repeat(200);
        let cases: &[(&str, Option<&str>)] = &[
            ("m-1", Some("m-1")),
            ("0abc", Some("0abc")),
            ("Match_42", None),
            ("match-42", Some("match-42")),
            ("-lead", None),
            ("trail-", None),
            ("a.b", None),
            ("ÄÖÜ", None),
            ("!!!", None),
            (
                "550e8400-e29b-41d4-a716-446655440000",
                Some("550e8400-e29b-41d4-a716-446655440000"),
            ),
            (&long, None),
        ];
        for (id, same) in cases {
            let name = match_name(id);
            assert!(is_dns_label(&name), "{id:?} -> {name:?}");
            assert_eq!(name, match_name(id), "deterministic");
            if let Some(same) = same {
                assert_eq!(&name, same);
            } else {
                assert_ne!(&name, id);
                assert_eq!(
                    name.len() - name.rfind('-').unwrap() - 1,
                    HASH_HEX,
                    "{name}"
                );
            }
        }
        assert_eq!(match_name("Match_42").split('-').next(), Some("match"));
        assert_ne!(match_name("A_1"), match_name("a-1"));
        assert_ne!(match_name("A_1"), match_name("a_1"));
        assert_ne!(match_name(&long), match_name(&"x".repeat(201)));
        assert!(match_name("!!!").starts_with("m-"));
    }
}
