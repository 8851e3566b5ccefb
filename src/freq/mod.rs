//! Module freq (under construction).
