//! [`Columns`]: the values of one user's mapped columns, packed; [`FieldValue`]: one such value.
//!
//! A run holds every mapped DingTalk user and every existing user row of the organization at
//! once: 200,000 of these for 100,000 users. A map per user with a `String` per text cost about
//! 800 bytes of heap each (a B-tree node of 11 slots, and an allocation per value); this layout
//! keeps a user's texts in one allocation and its slots in another, 16 bytes of slot per column.

use std::fmt;

use super::table_columns::{ColumnKind, WRITABLE_USER_COLUMNS, column_spec};

/// The value of one Casdoor user column.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FieldValue {
    Text(String),
    Bool(bool),
    Int(i64),
}

impl FieldValue {
    /// Casdoor's canonical string form, used in the hash: text as is, bools `1`/`0`, ints decimal.
    pub fn canonical(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
            Self::Int(i) => i.to_string(),
        }
    }

    pub fn kind(&self) -> ColumnKind {
        match self {
            Self::Text(_) => ColumnKind::Text,
            Self::Bool(_) => ColumnKind::Bool,
            Self::Int(_) => ColumnKind::Int,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_ref(&self) -> FieldRef<'_> {
        match self {
            Self::Text(s) => FieldRef::Text(s),
            Self::Bool(b) => FieldRef::Bool(*b),
            Self::Int(i) => FieldRef::Int(*i),
        }
    }
}

/// A column's value, borrowed from a [`Columns`] or a [`FieldValue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FieldRef<'a> {
    Text(&'a str),
    Bool(bool),
    Int(i64),
}

impl FieldRef<'_> {
    pub fn to_value(self) -> FieldValue {
        match self {
            Self::Text(s) => FieldValue::Text(s.to_owned()),
            Self::Bool(b) => FieldValue::Bool(b),
            Self::Int(i) => FieldValue::Int(i),
        }
    }
}

impl FieldRef<'static> {
    /// What a new row holds when DingTalk gave no value (`''`, false, 0), as Casdoor inserts,
    /// and what a column reads as when it was not read.
    pub fn zero(kind: ColumnKind) -> Self {
        match kind {
            ColumnKind::Text => Self::Text(""),
            ColumnKind::Bool => Self::Bool(false),
            ColumnKind::Int => Self::Int(0),
        }
    }
}

impl PartialEq<FieldValue> for FieldRef<'_> {
    fn eq(&self, other: &FieldValue) -> bool {
        *self == other.as_ref()
    }
}

/// One column of a [`Columns`]: 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Slot {
    /// Position of the column in [`WRITABLE_USER_COLUMNS`].
    column: u16,
    value: Packed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Packed {
    /// DingTalk gave no value.
    Absent,
    /// `text[start..end]`.
    Text {
        start: u32,
        end: u32,
    },
    Bool(bool),
    /// An `i64` as two halves, so that a slot needs no 8-byte alignment.
    Int([u32; 2]),
}

/// The values of one user's columns, by column name, in column-name order. A column is either
/// absent (`None`: DingTalk gave no value) or holds a value. Only the user columns syncerd may
/// write ([`WRITABLE_USER_COLUMNS`]) can be held; others are left out.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Columns {
    text: Box<str>,
    slots: Box<[Slot]>,
}

fn column_index(column: &str) -> Option<u16> {
    WRITABLE_USER_COLUMNS
        .iter()
        .position(|c| c.column == column)
        .and_then(|i| u16::try_from(i).ok())
}

fn column_name(index: u16) -> &'static str {
    WRITABLE_USER_COLUMNS
        .get(usize::from(index))
        .map_or("", |c| c.column)
}

impl Columns {
    pub fn new() -> Self {
        Self::default()
    }

    /// Packs `entries`; a later entry for the same column replaces an earlier one, as Casdoor
    /// assigns a mapping's columns in order.
    pub fn from_entries<I>(entries: I) -> Self
    where
        I: IntoIterator<Item = (&'static str, Option<FieldValue>)>,
    {
        let mut sorted: Vec<(u16, Option<FieldValue>)> = Vec::new();
        for (column, value) in entries {
            let Some(index) = column_index(column) else {
                continue;
            };
            match sorted.iter_mut().find(|(c, _)| *c == index) {
                Some(entry) => entry.1 = value,
                None => sorted.push((index, value)),
            }
        }
        sorted.sort_by_key(|(index, _)| column_name(*index));
        let text_len = sorted
            .iter()
            .filter_map(|(_, v)| match v {
                Some(FieldValue::Text(t)) => Some(t.len()),
                _ => None,
            })
            .sum();
        let mut text = String::with_capacity(text_len);
        let mut slots = Vec::with_capacity(sorted.len());
        for (column, value) in sorted {
            let value = match value {
                None => Packed::Absent,
                Some(FieldValue::Bool(b)) => Packed::Bool(b),
                Some(FieldValue::Int(i)) => {
                    let bits = i as u64;
                    Packed::Int([bits as u32, (bits >> 32) as u32])
                }
                Some(FieldValue::Text(t)) => {
                    // Column values are checked against their limits (64 KiB at most) long
                    // before they get here; a 4 GiB user cannot happen.
                    let start = u32::try_from(text.len()).unwrap_or(u32::MAX);
                    text.push_str(&t);
                    let end = u32::try_from(text.len()).unwrap_or(u32::MAX);
                    Packed::Text { start, end }
                }
            };
            slots.push(Slot { column, value });
        }
        Columns {
            text: text.into_boxed_str(),
            slots: slots.into_boxed_slice(),
        }
    }

    fn unpack(&self, value: Packed) -> Option<FieldRef<'_>> {
        match value {
            Packed::Absent => None,
            Packed::Bool(b) => Some(FieldRef::Bool(b)),
            Packed::Int([low, high]) => Some(FieldRef::Int(
                (u64::from(low) | (u64::from(high) << 32)) as i64,
            )),
            Packed::Text { start, end } => Some(FieldRef::Text(
                self.text
                    .get(start as usize..end as usize)
                    .unwrap_or_default(),
            )),
        }
    }

    /// `None` when the column is not held; `Some(None)` when it is held but absent.
    pub fn get(&self, column: &str) -> Option<Option<FieldRef<'_>>> {
        // A user holds a handful of columns: look among them, not through every writable one.
        let slot = self
            .slots
            .iter()
            .find(|s| column_name(s.column) == column)?;
        Some(self.unpack(slot.value))
    }

    /// The column's value, `None` when not held or absent.
    pub fn value(&self, column: &str) -> Option<FieldRef<'_>> {
        self.get(column).flatten()
    }

    /// Every held column in column-name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, Option<FieldRef<'_>>)> {
        self.slots
            .iter()
            .map(|s| (column_name(s.column), self.unpack(s.value)))
    }

    /// Sets one column (rebuilds the packing: for tests and rare edits, not per-row work).
    pub fn set(&mut self, column: &'static str, value: Option<FieldValue>) {
        let entries: Vec<(&'static str, Option<FieldValue>)> = self
            .iter()
            .map(|(c, v)| (c, v.map(FieldRef::to_value)))
            .chain([(column, value)])
            .collect();
        *self = Columns::from_entries(entries);
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The same columns with every absent one at its zero value (`''`, false, 0): what a new
    /// row holds.
    pub fn with_zeros(self) -> Columns {
        if self.slots.iter().all(|s| s.value != Packed::Absent) {
            return self;
        }
        Columns::from_entries(self.iter().map(|(column, value)| {
            let value = value.unwrap_or_else(|| zero_of(column)).to_value();
            (column, Some(value))
        }))
    }
}

impl FromIterator<(&'static str, Option<FieldValue>)> for Columns {
    fn from_iter<I: IntoIterator<Item = (&'static str, Option<FieldValue>)>>(iter: I) -> Self {
        Columns::from_entries(iter)
    }
}

impl FromIterator<(&'static str, FieldValue)> for Columns {
    fn from_iter<I: IntoIterator<Item = (&'static str, FieldValue)>>(iter: I) -> Self {
        Columns::from_entries(iter.into_iter().map(|(c, v)| (c, Some(v))))
    }
}

impl<const N: usize> From<[(&'static str, FieldValue); N]> for Columns {
    fn from(entries: [(&'static str, FieldValue); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl fmt::Debug for Columns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The zero value of a column (`''` for one syncerd does not know).
pub fn zero_of(column: &str) -> FieldRef<'static> {
    FieldRef::zero(column_spec(column).map_or(ColumnKind::Text, |s| s.kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Option<FieldValue> {
        Some(FieldValue::Text(s.to_owned()))
    }

    #[test]
    fn values_come_back_as_packed_in_column_order() {
        let columns = Columns::from_entries([
            ("phone", text("13800000000")),
            ("display_name", text("张三 🙂")),
            ("is_forbidden", Some(FieldValue::Bool(true))),
            ("email", None),
            ("score", Some(FieldValue::Int(-7_000_000_000))),
            ("title", text("")),
        ]);
        let held: Vec<_> = columns.iter().collect();
        assert_eq!(
            held,
            vec![
                ("display_name", Some(FieldRef::Text("张三 🙂"))),
                ("email", None),
                ("is_forbidden", Some(FieldRef::Bool(true))),
                ("phone", Some(FieldRef::Text("13800000000"))),
                ("score", Some(FieldRef::Int(-7_000_000_000))),
                ("title", Some(FieldRef::Text(""))),
            ]
        );
        assert_eq!(columns.get("email"), Some(None));
        assert_eq!(columns.get("avatar"), None);
        assert_eq!(columns.value("phone"), Some(FieldRef::Text("13800000000")));
        assert_eq!(columns.len(), 6);
    }

    #[test]
    fn a_later_entry_for_a_column_wins_and_unknown_columns_are_left_out() {
        let columns = Columns::from_entries([
            ("title", text("first")),
            ("password", text("never held")),
            ("title", text("second")),
        ]);
        assert_eq!(
            columns.iter().collect::<Vec<_>>(),
            vec![("title", Some(FieldRef::Text("second")))]
        );
    }

    #[test]
    fn zeros_fill_absent_columns_by_kind() {
        let columns = Columns::from_entries([
            ("email", None),
            ("is_forbidden", None),
            ("score", None),
            ("title", text("cto")),
        ]);
        let filled = columns.with_zeros();
        assert_eq!(
            filled.iter().collect::<Vec<_>>(),
            vec![
                ("email", Some(FieldRef::Text(""))),
                ("is_forbidden", Some(FieldRef::Bool(false))),
                ("score", Some(FieldRef::Int(0))),
                ("title", Some(FieldRef::Text("cto"))),
            ]
        );
    }

    #[test]
    fn a_slot_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }

    #[test]
    fn equal_contents_are_equal_whatever_the_entry_order() {
        let a = Columns::from_entries([("title", text("x")), ("email", text("y"))]);
        let b = Columns::from_entries([("email", text("y")), ("title", text("x"))]);
        assert_eq!(a, b);
        assert_ne!(a, Columns::from_entries([("email", text("y"))]));
    }
}
