//! What a store records about itself at creation, and checks at every open.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::options::OpenOptions;
use crate::table::TableType;

#[cfg(doc)]
use super::DetsError;

/// What a store records about itself at creation, and checks at every open.
///
/// The type names come from `std::any::type_name`, whose exact text Rust does not promise to
/// keep across compiler versions: a toolchain upgrade could turn a matching schema into a
/// [`DetsError::SchemaMismatch`] (a refusal, never a misread). Bump [`OpenOptions::version`]
/// when a type changes shape but not name: names alone cannot see that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// The table type.
    pub table_type: TableType,
    /// `std::any::type_name` of the key type.
    pub key_type: String,
    /// `std::any::type_name` of the value type.
    pub value_type: String,
    /// The user's version number ([`OpenOptions::version`]).
    pub version: u32,
}

impl Schema {
    /// The schema of a table of `(K, V)` opened with `opts`.
    pub fn of<K, V>(opts: &OpenOptions) -> Self {
        Schema {
            table_type: opts.table_type,
            key_type: std::any::type_name::<K>().to_string(),
            value_type: std::any::type_name::<V>().to_string(),
            version: opts.version,
        }
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} of ({}, {}) version {}",
            self.table_type, self.key_type, self.value_type, self.version
        )
    }
}
