//! The text protocol: one command per line over TCP (default port 8889), one reply
//! line per command, with the seed's reply strings.
//!
//! `LOGIN user pass`, `REGISTER user pass`, `MOVE x y`, `SHOOT`, see [`parse_line`].

pub const DEFAULT_TCP_PORT: u16 = 8889;

/// Longest TCP command line, newline excluded.
pub const MAX_LINE: usize = 512;

/// One TCP command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    Login {
        username: &'a str,
        password: &'a str,
    },
    Register {
        username: &'a str,
        password: &'a str,
    },
    Move {
        x: f64,
        y: f64,
    },
    Shoot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    Empty,
    Unknown,
    MissingCoordinates,
    InvalidCoordinates,
    /// `LOGIN` or `REGISTER` without both words.
    MissingCredentials(&'static str),
    TooLong,
    InvalidUtf8,
}

impl LineError {
    /// The reply line, without its newline.
    pub fn reply(self) -> &'static str {
        match self {
            LineError::Empty => "EMPTY_COMMAND",
            LineError::Unknown | LineError::InvalidUtf8 => "UNKNOWN_COMMAND",
            LineError::MissingCoordinates => "MOVE_ERROR Missing coordinates",
            LineError::InvalidCoordinates => "MOVE_ERROR Invalid coordinates",
            LineError::MissingCredentials("REGISTER") => {
                "REGISTER_FAILURE Usage: REGISTER <username> <password>"
            }
            LineError::MissingCredentials(_) => "LOGIN_FAILURE Usage: LOGIN <username> <password>",
            LineError::TooLong => "UNKNOWN_COMMAND Line too long",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            LineError::Empty => "empty",
            LineError::Unknown => "unknown_command",
            LineError::MissingCoordinates => "missing_coordinates",
            LineError::InvalidCoordinates => "invalid_coordinates",
            LineError::MissingCredentials(_) => "missing_credentials",
            LineError::TooLong => "too_long",
            LineError::InvalidUtf8 => "invalid_utf8",
        }
    }
}

pub const TCP_UNAUTHORIZED: &str = "UNAUTHORIZED You must login first";

/// Parses one line (newline stripped or not). Command words are case-insensitive.
pub fn parse_line(bytes: &[u8]) -> Result<Line<'_>, LineError> {
    if bytes.len() > MAX_LINE {
        return Err(LineError::TooLong);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| LineError::InvalidUtf8)?;
    let mut words = text.split_ascii_whitespace();
    let command = words.next().ok_or(LineError::Empty)?;
    fn credentials<'a>(
        words: &mut std::str::SplitAsciiWhitespace<'a>,
        which: &'static str,
    ) -> Result<(&'a str, &'a str), LineError> {
        match (words.next(), words.next()) {
            (Some(u), Some(p)) => Ok((u, p)),
            _ => Err(LineError::MissingCredentials(which)),
        }
    }
    if command.eq_ignore_ascii_case("LOGIN") {
        let (username, password) = credentials(&mut words, "LOGIN")?;
        Ok(Line::Login { username, password })
    } else if command.eq_ignore_ascii_case("REGISTER") {
        let (username, password) = credentials(&mut words, "REGISTER")?;
        Ok(Line::Register { username, password })
    } else if command.eq_ignore_ascii_case("MOVE") {
        let (Some(x), Some(y)) = (words.next(), words.next()) else {
            return Err(LineError::MissingCoordinates);
        };
        let parse = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
        match (parse(x), parse(y)) {
            (Some(x), Some(y)) => Ok(Line::Move { x, y }),
            _ => Err(LineError::InvalidCoordinates),
        }
    } else if command.eq_ignore_ascii_case("SHOOT") {
        Ok(Line::Shoot)
    } else {
        Err(LineError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_lines_parse_with_the_seed_replies() {
        assert_eq!(
            parse_line(b"LOGIN alice pw\n"),
            Ok(Line::Login {
                username: "alice",
                password: "pw"
            })
        );
        assert_eq!(parse_line(b"move 1 2.5"), Ok(Line::Move { x: 1.0, y: 2.5 }));
        assert_eq!(parse_line(b"SHOOT"), Ok(Line::Shoot));
        let cases: &[(&[u8], &str)] = &[
            (b"", "EMPTY_COMMAND"),
            (b"   \r\n", "EMPTY_COMMAND"),
            (b"DANCE", "UNKNOWN_COMMAND"),
            (b"MOVE", "MOVE_ERROR Missing coordinates"),
            (b"MOVE 1", "MOVE_ERROR Missing coordinates"),
            (b"MOVE a b", "MOVE_ERROR Invalid coordinates"),
            (b"MOVE NaN 1", "MOVE_ERROR Invalid coordinates"),
            (b"\xff", "UNKNOWN_COMMAND"),
        ];
        for (line, reply) in cases {
            assert_eq!(
                parse_line(line).unwrap_err().reply(),
                *reply,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
