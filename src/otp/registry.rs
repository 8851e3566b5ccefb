//! A process-wide name registry for servers (Erlang's `register/2` and `whereis/1`,
//! <https://www.erlang.org/doc/apps/erts/erlang.html#register/2>).
//!
//! Names map to *handles*, not instances, so a registered supervised server stays reachable under
//! its name across restarts. The registry holds weak references: it never keeps a server alive,
//! and a name whose server handles are all gone is free again.
//!
//! This file knows nothing of servers: it stores type-erased [`Named`] entries, and the typed
//! [`register`](crate::otp::register) / [`whereis`](crate::otp::whereis) beside
//! [`Server`](crate::otp::Server) put and get them (so the dependency runs one way, from the
//! generic server to the registry).

use std::any::Any;
use std::collections::HashMap;
use std::sync::OnceLock;

use parking_lot::Mutex;

use super::error::OtpError;

/// What the registry holds for a name: a weak handle of some type, which can tell whether the
/// thing it points to still has (strong) handles.
pub(crate) trait Named: Send + Sync + 'static {
    /// True while the named thing has handles.
    fn is_live(&self) -> bool;
    /// The entry itself, to be downcast to its concrete type.
    fn as_any(&self) -> &dyn Any;
}

type Entries = HashMap<String, Box<dyn Named>>;

fn entries() -> &'static Mutex<Entries> {
    static REGISTRY: OnceLock<Mutex<Entries>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Puts `entry` under `name`. Error: [`OtpError::NameTaken`] if the name's entry is still live.
pub(crate) fn insert(name: String, entry: Box<dyn Named>) -> Result<(), OtpError> {
    let mut map = entries().lock();
    if map.get(&name).is_some_and(|e| e.is_live()) {
        return Err(OtpError::NameTaken(name));
    }
    map.insert(name, entry);
    Ok(())
}

/// Looks `name` up as an entry of type `W` and maps it with `upgrade` (which returns `None` if
/// the entry is dead; the name is then freed). `Ok(None)` if the name is not registered;
/// [`OtpError::WrongType`] if it is registered, live, with another type.
pub(crate) fn find<W: Any, R>(
    name: &str,
    upgrade: impl FnOnce(&W) -> Option<R>,
) -> Result<Option<R>, OtpError> {
    let mut map = entries().lock();
    let Some(entry) = map.get(name) else {
        return Ok(None);
    };
    match entry.as_any().downcast_ref::<W>() {
        Some(w) => match upgrade(w) {
            Some(r) => Ok(Some(r)),
            None => {
                map.remove(name);
                Ok(None)
            }
        },
        None if entry.is_live() => Err(OtpError::WrongType {
            name: name.to_string(),
        }),
        None => {
            map.remove(name);
            Ok(None)
        }
    }
}

/// Removes `name` from the registry. Returns true if it was registered.
pub fn unregister(name: &str) -> bool {
    entries().lock().remove(name).is_some()
}
