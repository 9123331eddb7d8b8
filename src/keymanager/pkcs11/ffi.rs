//! Every cryptoki (PKCS#11) call cairn makes lives in this file; the rest of cairn sees
//! [`Token`], [`KeyObject`] and [`Pkcs11Error`].
//!
//! - A module (`libsofthsm2.so`, a vendor library) is loaded and `C_Initialize`d once per
//!   process, with OS locking, and shared by every token opened from it: PKCS#11 allows one
//!   initialisation per application, and login state belongs to the application.
//! - A [`Token`] is found by label (slot ids change when tokens are initialised; never rely on
//!   them), logs the user in once and keeps that login alive with an anchor session, and
//!   lends sessions from a pool so concurrent signatures do not queue on one session.

use super::{Curve, Pkcs11Error};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};

/// Idle sessions kept for reuse; more are opened under load and closed when returned.
const MAX_IDLE_SESSIONS: usize = 32;

/// Loaded and initialised modules, by path: `C_Initialize` happens once per module per process.
static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

fn call<'a>(op: &'static str, token: &'a str) -> impl Fn(CkError) -> Pkcs11Error + 'a {
    move |e| Pkcs11Error::Call { op, token: token.to_owned(), reason: short(&e) }
}

/// The PKCS#11 return value's name (`CKR_PIN_INCORRECT` as `PinIncorrect`) rather than
/// cryptoki's paragraph-long description.
fn short(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => format!("{f:?} returned {rv:?}"),
        other => other.to_string(),
    }
}

fn module(path: &Path) -> Result<Pkcs11, Pkcs11Error> {
    let modules = MODULES.get_or_init(Mutex::default);
    let mut modules =
        modules.lock().map_err(|_| Pkcs11Error::ModuleLoad { path: path.to_owned(), reason: "module table lock poisoned".into() })?;
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    if !path.is_file() {
        return Err(Pkcs11Error::ModuleNotFound { path: path.to_owned() });
    }
    let ctx = Pkcs11::new(path).map_err(|e| Pkcs11Error::ModuleLoad { path: path.to_owned(), reason: short(&e) })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another library in this process initialised the module first: that is fine.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(Pkcs11Error::ModuleLoad { path: path.to_owned(), reason: short(&e) }),
    }
    modules.insert(path.to_owned(), ctx.clone());
    Ok(ctx)
}

/// What a token says about itself (for `cairn hsm list`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenSummary {
    /// The token label.
    pub label: String,
    /// The slot id it sits in now (informational: it changes).
    pub slot: u64,
    /// Manufacturer and model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Whether the user PIN is locked.
    pub pin_locked: bool,
}

/// The tokens a module offers.
///
/// # Errors
/// The module cannot be loaded or asked.
pub fn list_tokens(module_path: &Path) -> Result<Vec<TokenSummary>, Pkcs11Error> {
    let ctx = module(module_path)?;
    let what = module_path.display().to_string();
    let mut out = Vec::new();
    for slot in ctx.get_slots_with_token().map_err(call("C_GetSlotList", &what))? {
        let info = ctx.get_token_info(slot).map_err(call("C_GetTokenInfo", &what))?;
        out.push(TokenSummary {
            label: info.label().trim_end().to_owned(),
            slot: slot.id(),
            model: format!("{} {}", info.manufacturer_id().trim_end(), info.model().trim_end()),
            serial: info.serial_number().trim_end().to_owned(),
            pin_locked: info.user_pin_locked(),
        });
    }
    Ok(out)
}

/// A logged-in token with a session pool.
pub struct Token {
    ctx: Pkcs11,
    slot: Slot,
    label: String,
    pin: AuthPin,
    /// Held for the token's lifetime: PKCS#11 logs the application out when its last session
    /// on the token closes, and the pool may shrink to nothing.
    anchor: Mutex<Session>,
    idle: Mutex<Vec<Session>>,
    /// Sessions lent out now, at most `max_sessions`; `returned` wakes a waiting caller.
    in_use: Mutex<usize>,
    returned: Condvar,
    max_sessions: usize,
}

/// A place among the `max_sessions` sessions in use, given back on drop (also when the
/// PKCS#11 call fails).
struct Lent<'a>(&'a Token);

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Ok(mut n) = self.0.in_use.lock() {
            *n = n.saturating_sub(1);
        }
        self.0.returned.notify_one();
    }
}

impl std::fmt::Debug for Token {
    // The PIN is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("label", &self.label).field("slot", &self.slot.id()).finish_non_exhaustive()
    }
}

/// A key pair's private half on the token, with what cairn needs of its public half.
#[derive(Debug, Clone)]
pub struct KeyObject {
    /// Handle of the private key.
    pub private: ObjectHandle,
    /// The curve, read from the public key's CKA_EC_PARAMS.
    pub curve: Curve,
    /// The uncompressed SEC1 public point.
    pub point: Vec<u8>,
}

/// One key object as `cairn hsm list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ObjectSummary {
    /// CKA_LABEL.
    pub label: String,
    /// CKA_ID, hex.
    pub id: String,
    /// `private` or `public`.
    pub class: &'static str,
    /// `ec-p256`, `ec-p384` or what the token says.
    pub key_type: String,
    /// CKA_SENSITIVE (private keys).
    pub sensitive: Option<bool>,
    /// CKA_EXTRACTABLE (private keys).
    pub extractable: Option<bool>,
    /// CKA_NEVER_EXTRACTABLE (private keys).
    pub never_extractable: Option<bool>,
}

impl Token {
    /// Loads the module, finds the token labelled `label`, checks that it can do what cairn
    /// needs, and logs the user in. At most `max_sessions` (at least 1) sessions are used at
    /// once besides the one that holds the login.
    ///
    /// # Errors
    /// Module missing or unloadable, no such token, locked or wrong PIN, missing mechanisms.
    pub fn open(module_path: &Path, label: &str, pin: AuthPin, max_sessions: usize) -> Result<Self, Pkcs11Error> {
        let ctx = module(module_path)?;
        let what = module_path.display().to_string();
        let mut present = Vec::new();
        let mut found = None;
        for slot in ctx.get_slots_with_token().map_err(call("C_GetSlotList", &what))? {
            let info = ctx.get_token_info(slot).map_err(call("C_GetTokenInfo", &what))?;
            let this = info.label().trim_end().to_owned();
            if this == label {
                if found.is_some() {
                    return Err(Pkcs11Error::TokenAmbiguous { label: label.to_owned() });
                }
                found = Some((slot, info.user_pin_locked()));
            }
            present.push(this);
        }
        let Some((slot, locked)) = found else {
            return Err(Pkcs11Error::TokenNotFound { label: label.to_owned(), present });
        };
        if locked {
            return Err(Pkcs11Error::PinLocked { token: label.to_owned() });
        }
        let mechanisms = ctx.get_mechanism_list(slot).map_err(call("C_GetMechanismList", label))?;
        for (need, name) in [(MechanismType::ECDSA, "CKM_ECDSA"), (MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN")] {
            if !mechanisms.contains(&need) {
                return Err(Pkcs11Error::MechanismUnsupported { token: label.to_owned(), mechanism: name });
            }
        }
        let anchor = ctx.open_rw_session(slot).map_err(call("C_OpenSession", label))?;
        login(&anchor, &pin, label)?;
        Ok(Self {
            ctx,
            slot,
            label: label.to_owned(),
            pin,
            anchor: Mutex::new(anchor),
            idle: Mutex::new(Vec::new()),
            in_use: Mutex::new(0),
            returned: Condvar::new(),
            max_sessions: max_sessions.max(1),
        })
    }

    /// The token label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs `f` on a pooled session. A session whose login was lost (the token was
    /// reinserted, another application logged out) is logged in again and `f` retried once.
    pub(super) fn with_session<T>(&self, op: &'static str, f: impl Fn(&Session) -> Result<T, CkError>) -> Result<T, Pkcs11Error> {
        let _lent = self.lend()?;
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let session = match pooled {
            Some(s) => s,
            None => self.ctx.open_rw_session(self.slot).map_err(call("C_OpenSession", &self.label))?,
        };
        let result = match f(&session) {
            Err(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) => {
                {
                    let anchor = self.anchor.lock().map_err(|_| Pkcs11Error::Call {
                        op,
                        token: self.label.clone(),
                        reason: "session lock poisoned".into(),
                    })?;
                    login(&anchor, &self.pin, &self.label)?;
                }
                f(&session)
            }
            other => other,
        };
        match result {
            Ok(v) => {
                if let Ok(mut idle) = self.idle.lock()
                    && idle.len() < MAX_IDLE_SESSIONS
                {
                    idle.push(session);
                }
                Ok(v)
            }
            // A failed call may leave an operation half-initialised on the session: close it.
            Err(e) => Err(call(op, &self.label)(e)),
        }
    }

    /// Waits, off the async runtime as every caller here is, until fewer than `max_sessions`
    /// sessions are in use, and takes a place.
    fn lend(&self) -> Result<Lent<'_>, Pkcs11Error> {
        let poisoned = || Pkcs11Error::Call { op: "session pool", token: self.label.clone(), reason: "lock poisoned".into() };
        let mut n = self.in_use.lock().map_err(|_| poisoned())?;
        while *n >= self.max_sessions {
            n = self.returned.wait(n).map_err(|_| poisoned())?;
        }
        *n += 1;
        Ok(Lent(self))
    }

    /// The most sessions this token lends at once.
    #[must_use]
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// Signs `digest` with CKM_ECDSA; the token answers raw `r || s`.
    ///
    /// # Errors
    /// The token refuses or is gone.
    pub fn sign_ecdsa(&self, key: ObjectHandle, digest: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        self.with_session("C_Sign", |s| s.sign(&Mechanism::Ecdsa, key, digest))
    }

    /// Generates an EC key pair on the token: both halves token objects with `label` and `id`;
    /// the private half private, sensitive and not extractable, so its value never leaves.
    ///
    /// # Errors
    /// The token refuses.
    pub fn generate_ec(&self, curve: Curve, label: &str, id: &[u8]) -> Result<KeyObject, Pkcs11Error> {
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(curve.params_der().to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ];
        let (pub_handle, priv_handle) =
            self.with_session("C_GenerateKeyPair", |s| s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private))?;
        let point = self.ec_point(pub_handle, curve)?;
        Ok(KeyObject { private: priv_handle, curve, point })
    }

    /// Every object (public and private keys) labelled `label`.
    fn find_labelled(&self, class: ObjectClass, label: &str) -> Result<Vec<ObjectHandle>, Pkcs11Error> {
        let template = [Attribute::Class(class), Attribute::Label(label.as_bytes().to_vec())];
        self.with_session("C_FindObjects", |s| s.find_objects(&template))
    }

    /// The key pair labelled `label`, if there is one.
    ///
    /// # Errors
    /// Two private keys share the label, the public half is missing, or the key is not an EC
    /// key on a curve cairn signs with.
    pub fn find_key(&self, label: &str) -> Result<Option<KeyObject>, Pkcs11Error> {
        let privates = self.find_labelled(ObjectClass::PRIVATE_KEY, label)?;
        let private = match privates.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => {
                return Err(Pkcs11Error::KeyUnusable {
                    label: label.to_owned(),
                    reason: "more than one private key has this label".into(),
                });
            }
        };
        let unusable = |reason: String| Pkcs11Error::KeyUnusable { label: label.to_owned(), reason };
        let attrs =
            self.with_session("C_GetAttributeValue", |s| s.get_attributes(private, &[AttributeType::KeyType, AttributeType::Id]))?;
        let mut id = None;
        for a in attrs {
            match a {
                Attribute::KeyType(kt) if kt != CkKeyType::EC => return Err(unusable(format!("key type {kt}, not EC"))),
                Attribute::Id(v) => id = Some(v),
                _ => {}
            }
        }
        let id = id.ok_or_else(|| unusable("the private key has no CKA_ID to find its public key by".into()))?;
        let template = [Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Label(label.as_bytes().to_vec()), Attribute::Id(id)];
        let publics = self.with_session("C_FindObjects", |s| s.find_objects(&template))?;
        let [public] = publics.as_slice() else {
            return Err(unusable(format!("{} public keys with its label and CKA_ID (expected 1)", publics.len())));
        };
        let params = self.with_session("C_GetAttributeValue", |s| s.get_attributes(*public, &[AttributeType::EcParams]))?;
        let curve = params
            .into_iter()
            .find_map(|a| if let Attribute::EcParams(p) = a { Curve::from_params_der(&p) } else { None })
            .ok_or_else(|| unusable("not on P-256 or P-384".into()))?;
        let point = self.ec_point(*public, curve)?;
        Ok(Some(KeyObject { private, curve, point }))
    }

    fn ec_point(&self, public: ObjectHandle, curve: Curve) -> Result<Vec<u8>, Pkcs11Error> {
        let attrs = self.with_session("C_GetAttributeValue", |s| s.get_attributes(public, &[AttributeType::EcPoint]))?;
        let raw = attrs.into_iter().find_map(|a| if let Attribute::EcPoint(p) = a { Some(p) } else { None });
        raw.as_deref().and_then(|r| curve.point_from_ec_point(r)).ok_or_else(|| Pkcs11Error::Call {
            op: "C_GetAttributeValue",
            token: self.label.clone(),
            reason: "CKA_EC_POINT missing or not an uncompressed point on the key's curve".into(),
        })
    }

    /// Destroys every key object (both halves) labelled `label`.
    ///
    /// # Errors
    /// The token refuses.
    pub fn destroy_labelled(&self, label: &str) -> Result<(), Pkcs11Error> {
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            for h in self.find_labelled(class, label)? {
                self.with_session("C_DestroyObject", |s| s.destroy_object(h))?;
            }
        }
        Ok(())
    }

    /// Renames every key object labelled `from` to `to`.
    ///
    /// # Errors
    /// The token refuses.
    pub fn relabel(&self, from: &str, to: &str) -> Result<(), Pkcs11Error> {
        for class in [ObjectClass::PUBLIC_KEY, ObjectClass::PRIVATE_KEY] {
            for h in self.find_labelled(class, from)? {
                let label = [Attribute::Label(to.as_bytes().to_vec())];
                self.with_session("C_SetAttributeValue", |s| s.update_attributes(h, &label))?;
            }
        }
        Ok(())
    }

    /// Every key object on the token whose label starts with `prefix` (all with an empty one).
    ///
    /// # Errors
    /// The token refuses.
    pub fn list_keys(&self, prefix: &str) -> Result<Vec<ObjectSummary>, Pkcs11Error> {
        let mut out = Vec::new();
        for (class, name) in [(ObjectClass::PRIVATE_KEY, "private"), (ObjectClass::PUBLIC_KEY, "public")] {
            let handles = self.with_session("C_FindObjects", |s| s.find_objects(&[Attribute::Class(class)]))?;
            for h in handles {
                let wanted = [
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::KeyType,
                    AttributeType::EcParams,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                ];
                let attrs = self.with_session("C_GetAttributeValue", |s| s.get_attributes(h, &wanted))?;
                let mut o = ObjectSummary {
                    label: String::new(),
                    id: String::new(),
                    class: name,
                    key_type: String::new(),
                    sensitive: None,
                    extractable: None,
                    never_extractable: None,
                };
                for a in attrs {
                    match a {
                        Attribute::Label(l) => o.label = String::from_utf8_lossy(&l).into_owned(),
                        Attribute::Id(i) => o.id = crate::text::hex(&i),
                        Attribute::KeyType(k) if o.key_type.is_empty() => o.key_type = k.to_string(),
                        Attribute::EcParams(p) => {
                            if let Some(c) = Curve::from_params_der(&p) {
                                o.key_type = c.key_type().as_str().to_owned();
                            }
                        }
                        Attribute::Sensitive(b) => o.sensitive = Some(b),
                        Attribute::Extractable(b) => o.extractable = Some(b),
                        Attribute::NeverExtractable(b) => o.never_extractable = Some(b),
                        _ => {}
                    }
                }
                if o.label.starts_with(prefix) {
                    out.push(o);
                }
            }
        }
        out.sort_by(|a, b| (&a.label, a.class).cmp(&(&b.label, b.class)));
        Ok(out)
    }
}

fn login(session: &Session, pin: &AuthPin, token: &str) -> Result<(), Pkcs11Error> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(Pkcs11Error::PinIncorrect { token: token.to_owned() }),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(Pkcs11Error::PinLocked { token: token.to_owned() }),
        Err(e) => Err(call("C_Login", token)(e)),
    }
}
