//! Module ets (under construction).
