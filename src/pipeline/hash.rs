//! Casdoor's syncer content hash, as its syncer writes `user.hash`.
//!
//! Lowercase hex MD5 of the hashed columns' canonical values joined by `|`, in `table_columns`
//! order. Writing `hash = pre_hash =` this value makes Casdoor treat a row as in sync. There is
//! no escaping, so `a|b`+`c` and `a`+`b|c` collide — as in Casdoor.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use md5::{Digest, Md5};

/// A content hash as `user.hash`, `user.pre_hash` and `syncer_link.content_hash` store it. The
/// 32 lowercase hex digits syncerd and Casdoor write are kept as their 16 bytes; anything else
/// (a value another tool wrote) is kept as its text. Equality and order are those of the text.
///
/// A run holds four per user (the mapped hash, the row's `hash` and `pre_hash`, the link's):
/// as strings they cost 56 bytes each, as bytes 24.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub enum ContentHash {
    #[default]
    Empty,
    Md5([u8; 16]),
    Text(Box<str>),
}

impl ContentHash {
    /// The MD5 of UTF-8 text.
    pub fn md5_of(text: &str) -> Self {
        Self::Md5(Md5::digest(text.as_bytes()).into())
    }

    /// A stored value: lowercase hex MD5 as bytes, anything else as text.
    pub fn parse(text: &str) -> Self {
        if text.is_empty() {
            return Self::Empty;
        }
        let mut bytes = [0_u8; 16];
        let digits = text.as_bytes();
        let lower_hex = |d: u8| match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            _ => None,
        };
        if digits.len() == 32 {
            let parsed = bytes
                .iter_mut()
                .zip(digits.chunks_exact(2))
                .all(|(byte, pair)| {
                    match (
                        pair.first().and_then(|d| lower_hex(*d)),
                        pair.get(1).and_then(|d| lower_hex(*d)),
                    ) {
                        (Some(high), Some(low)) => {
                            *byte = high << 4 | low;
                            true
                        }
                        _ => false,
                    }
                });
            if parsed {
                return Self::Md5(bytes);
            }
        }
        Self::Text(text.into())
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Empty)
    }

    /// The stored text.
    pub fn as_text(&self) -> Cow<'_, str> {
        match self {
            Self::Empty => Cow::Borrowed(""),
            Self::Md5(bytes) => Cow::Owned(hex(bytes)),
            Self::Text(text) => Cow::Borrowed(text),
        }
    }
}

impl Ord for ContentHash {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            // Hex digits sort as their values do: the bytes sort as the text.
            (Self::Md5(a), Self::Md5(b)) => a.cmp(b),
            (Self::Empty, Self::Empty) => Ordering::Equal,
            (Self::Empty, _) => Ordering::Less,
            (_, Self::Empty) => Ordering::Greater,
            _ => self.as_text().cmp(&other.as_text()),
        }
    }
}

impl PartialOrd for ContentHash {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl From<&str> for ContentHash {
    fn from(text: &str) -> Self {
        Self::parse(text)
    }
}

impl From<String> for ContentHash {
    fn from(text: String) -> Self {
        Self::parse(&text)
    }
}

impl PartialEq<str> for ContentHash {
    fn eq(&self, other: &str) -> bool {
        *self == Self::parse(other)
    }
}

impl PartialEq<&str> for ContentHash {
    fn eq(&self, other: &&str) -> bool {
        *self == Self::parse(other)
    }
}

impl PartialEq<String> for ContentHash {
    fn eq(&self, other: &String) -> bool {
        *self == Self::parse(other)
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_text())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_text())
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(hex_digit(byte >> 4));
        out.push(hex_digit(byte & 0x0f));
    }
    out
}

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
    hex(&Md5::digest(text.as_bytes()))
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

    #[test]
    fn a_stored_hash_is_24_bytes_and_no_allocation() {
        assert_eq!(std::mem::size_of::<ContentHash>(), 24);
    }

    #[test]
    fn stored_hashes_keep_their_text_and_its_order() {
        let md5 = content_hash(["a", "b"]);
        let texts = [
            "",
            md5.as_str(),
            "D41D8CD98F00B204E9800998ECF8427E",
            "d41d8cd98f00b204e9800998ecf8427e",
            "d41d8cd98f00b204e9800998ecf8427",
            "zz1d8cd98f00b204e9800998ecf8427e",
            "ffffffffffffffffffffffffffffffff",
            "hand-written",
        ];
        let hashes: Vec<ContentHash> = texts.iter().map(|t| ContentHash::parse(t)).collect();
        assert!(matches!(hashes[1], ContentHash::Md5(_)));
        assert!(
            matches!(hashes[2], ContentHash::Text(_)),
            "upper case is not what syncerd writes"
        );
        assert_eq!(hashes[1], ContentHash::md5_of(&hash_input(["a", "b"])));
        for (a, ta) in hashes.iter().zip(texts) {
            assert_eq!(a.as_text(), ta);
            assert_eq!(a.to_string(), ta);
            for (b, tb) in hashes.iter().zip(texts) {
                assert_eq!(a.cmp(b), ta.cmp(tb), "{ta} against {tb}");
                assert_eq!(a == b, ta == tb);
            }
        }
    }
}
