//! Casdoor's syncer content hash (spec §2.4).
//!
//! Lowercase hex MD5 of the hashed columns' canonical values joined by `|`, in `table_columns`
//! order. Writing `hash = pre_hash =` this value makes Casdoor treat a row as in sync. There is
//! no escaping, so `a|b`+`c` and `a`+`b|c` collide — as in Casdoor.

use md5::{Digest, Md5};

/// The string that is hashed: the values joined by `|`.
pub fn hash_input<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    values.into_iter().collect::<Vec<_>>().join("|")
}

/// MD5 (lowercase hex) of `hash_input(values)`.
pub fn content_hash<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    md5_hex(&hash_input(values))
}

/// Lowercase hex MD5 of UTF-8 text.
pub fn md5_hex(text: &str) -> String {
    let digest = Md5::digest(text.as_bytes());
    let mut out = String::with_capacity(32);
    for byte in digest {
        out.push(hex_digit(byte >> 4));
        out.push(hex_digit(byte & 0x0f));
    }
    out
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_hashed_column_hashes_the_empty_string() {
        assert_eq!(content_hash([]), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn values_are_joined_by_a_bar_without_escaping() {
        assert_eq!(hash_input(["a|b", "c"]), hash_input(["a", "b|c"]));
        assert_eq!(hash_input(["", "x", ""]), "|x|");
    }
}
