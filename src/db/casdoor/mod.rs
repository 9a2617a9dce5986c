//! Casdoor's tables as a run reads and writes them: [`load`] reads an organization's state in
//! the shapes the planner takes, [`write`] writes one batch of a plan. The pipeline decides what
//! to write and when; the SQL lives here.

mod copy;
pub mod load;
mod rows;
pub mod write;

pub use copy::syncer_owns_rows;
pub use load::{
    DbState, OrganizationRow, SchemaFacts, find_organization, load_state, schema_facts,
    user_columns_to_read,
};
pub use write::{Batch, UserRowUpdate, Writer, begin_bounded, is_systemic};

use crate::pipeline::model::{LinkKind, LinkState};

/// Casbin's `ptype` of a user-group membership.
pub const GROUPING_PTYPE: &str = "g";

/// The stored text of a link's kind.
pub fn link_kind_text(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::User => "user",
        LinkKind::Group => "group",
    }
}

/// The stored text of a link's state.
pub fn link_state_text(state: LinkState) -> &'static str {
    match state {
        LinkState::Present => "present",
        LinkState::Left => "left",
    }
}

fn parse_link_kind(text: &str) -> Option<LinkKind> {
    match text {
        "user" => Some(LinkKind::User),
        "group" => Some(LinkKind::Group),
        _ => None,
    }
}

fn parse_link_state(text: &str) -> Option<LinkState> {
    match text {
        "present" => Some(LinkState::Present),
        "left" => Some(LinkState::Left),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_texts_round_trip() {
        for kind in [LinkKind::User, LinkKind::Group] {
            assert_eq!(parse_link_kind(link_kind_text(kind)), Some(kind));
        }
        for state in [LinkState::Present, LinkState::Left] {
            assert_eq!(parse_link_state(link_state_text(state)), Some(state));
        }
    }
}
