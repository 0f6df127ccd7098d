//! The outbound stack for one named service (being written).
