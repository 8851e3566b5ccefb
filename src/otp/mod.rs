//! Module otp (under construction).
