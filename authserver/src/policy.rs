//! What a username and a password must look like.

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
pub const PASSWORD_MIN: usize = 8;
/// Long enough for any passphrase or manager-generated password; short enough that a
/// hash request cannot be used to make us chew megabytes.
pub const PASSWORD_MAX: usize = 128;

/// The account key for `name`: its lower-case form, so "Alice" and "alice" are one
/// account. Names are ASCII letters, digits, `_`, `-`, `.`, starting with a letter or
/// digit. ASCII only on purpose: Unicode names invite look-alike impersonation
/// ("аlice" with a Cyrillic "а") and case-folding surprises.
pub fn canonical_username(name: &str) -> Result<String, String> {
    let len = name.len();
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&len) {
        return Err(format!(
            "username must be {USERNAME_MIN} to {USERNAME_MAX} characters long"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("username may contain only letters, digits, '_', '-' and '.'".into());
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("username must start with a letter or a digit".into());
    }
    Ok(name.to_ascii_lowercase())
}

/// NIST SP 800-63B style: a length range and no composition rules, plus two checks
/// that catch real mistakes (control characters, the username as password).
pub fn check_password(username: &str, password: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < PASSWORD_MIN {
        return Err(format!(
            "password must be at least {PASSWORD_MIN} characters long"
        ));
    }
    if chars > PASSWORD_MAX {
        return Err(format!(
            "password must be at most {PASSWORD_MAX} characters long"
        ));
    }
    if password.chars().any(char::is_control) {
        return Err("password must not contain control characters".into());
    }
    if password.eq_ignore_ascii_case(username) {
        return Err("password must differ from the username".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(canonical_username("Alice_01").unwrap(), "alice_01");
        assert_eq!(canonical_username("a.b-c").unwrap(), "a.b-c");
        let max = "x".repeat(USERNAME_MAX);
        assert!(canonical_username(&max).is_ok());
        let too_long = "x".repeat(USERNAME_MAX + 1);
        for bad in [
            "",
            "ab",
            too_long.as_str(),
            "_alice",
            ".alice",
            "al ice",
            "аlice",
            "al\nice",
            "a/b",
        ] {
            assert!(canonical_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords() {
        assert!(check_password("alice", "correct horse").is_ok());
        assert!(check_password("alice", "пароль-пароль").is_ok());
        let too_long = "p".repeat(PASSWORD_MAX + 1);
        for bad in ["short", too_long.as_str(), "tab\there12", "AliceAlice"] {
            assert!(check_password("alicealice", bad).is_err(), "{bad:?}");
        }
    }
}
