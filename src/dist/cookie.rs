//! Where the cookie comes from: `--cookie`, else `FREQALLOC_COOKIE`, else `~/.erlang.cookie`
//! (read as `erl` reads it: the first line, surrounding whitespace trimmed).

use super::error::DistError;

/// The cookie: `explicit`, else env `FREQALLOC_COOKIE`, else `$HOME/.erlang.cookie`.
pub fn resolve_cookie(explicit: Option<&str>) -> Result<String, DistError> {
    if let Some(c) = explicit.filter(|c| !c.is_empty()) {
        return Ok(c.to_string());
    }
    if let Ok(c) = std::env::var("FREQALLOC_COOKIE") {
        if !c.trim().is_empty() {
            return Ok(c.trim().to_string());
        }
    }
    let home = std::env::var_os("HOME").ok_or(DistError::NoCookie)?;
    let path = std::path::Path::new(&home).join(".erlang.cookie");
    let text = std::fs::read_to_string(path).map_err(|_| DistError::NoCookie)?;
    let c = text.lines().next().unwrap_or("").trim();
    if c.is_empty() {
        return Err(DistError::NoCookie);
    }
    Ok(c.to_string())
}
