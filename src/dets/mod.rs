//! Module dets (under construction).
