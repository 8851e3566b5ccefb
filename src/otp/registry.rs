//! A process-wide name registry for servers (Erlang's `register/2` and `whereis/1`,
//! <https://www.erlang.org/doc/apps/erts/erlang.html#register/2>).
//!
//! Names map to *handles*, not instances, so a registered supervised server stays reachable under
//! its name across restarts. The registry holds weak references: it never keeps a server alive,
//! and a name whose server handles are all gone is free again.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{OnceLock, Weak};

use parking_lot::Mutex;

use super::error::OtpError;
use super::gen_server::{GenServer, Server, Slot};

type Entries = HashMap<String, Probe>;

fn entries() -> &'static Mutex<Entries> {
    static REGISTRY: OnceLock<Mutex<Entries>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A type-erased weak handle plus a function that can tell, without knowing the type, whether
/// the server behind it still has handles.
struct Probe {
    weak: Box<dyn Any + Send + Sync>,
    live: fn(&(dyn Any + Send + Sync)) -> bool,
}

fn live_of<S: GenServer>(weak: &(dyn Any + Send + Sync)) -> bool {
    weak.downcast_ref::<Weak<Slot<S>>>()
        .is_some_and(|w| w.strong_count() > 0)
}

/// Registers `server` under `name`. Error: [`OtpError::NameTaken`] if the name belongs to a
/// server that still has handles.
pub fn register<S: GenServer>(name: impl Into<String>, server: &Server<S>) -> Result<(), OtpError> {
    let name = name.into();
    let mut map = entries().lock();
    if map.get(&name).is_some_and(|p| (p.live)(&*p.weak)) {
        return Err(OtpError::NameTaken(name));
    }
    let probe = Probe {
        weak: Box::new(server.downgrade()),
        live: live_of::<S>,
    };
    map.insert(name, probe);
    Ok(())
}

/// Looks `name` up. `Ok(None)` if it is not registered (or its server is gone);
/// [`OtpError::WrongType`] if it is registered for a server of another type.
pub fn whereis<S: GenServer>(name: &str) -> Result<Option<Server<S>>, OtpError> {
    let mut map = entries().lock();
    let Some(probe) = map.get(name) else {
        return Ok(None);
    };
    match probe.weak.downcast_ref::<Weak<Slot<S>>>() {
        Some(w) => match w.upgrade() {
            Some(slot) => Ok(Some(Server::from_slot(slot))),
            None => {
                map.remove(name);
                Ok(None)
            }
        },
        None if (probe.live)(&*probe.weak) => Err(OtpError::WrongType {
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
