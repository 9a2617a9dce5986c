//! One run of one syncer: map → plan → apply.
