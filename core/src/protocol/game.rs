//! Game server protocol: JSON datagrams over UDP, text lines over TCP.
