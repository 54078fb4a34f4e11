//! Auth server protocol: newline-delimited JSON over TCP.
