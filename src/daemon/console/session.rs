//! Console sign-in: sessions kept in memory, the session cookie, the `Origin` check of every
//! POST, and the throttle on wrong tokens.
//!
//! A session is 256 random bits from the operating system, given to the browser as an
//! HttpOnly, SameSite=Strict cookie and kept here with its expiry and a fingerprint of the admin
//! token it was opened with: changing `http.admin_token` (SIGHUP) signs everyone out. Sessions
//! live in this process only; a restart signs everyone out, which is the safe failure.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};

use crate::config::Settings;
use crate::secret::Secret;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "syncerd_session";
/// Sessions kept at once; signing in past this drops the one closest to expiry.
const MAX_SESSIONS: usize = 256;
/// Wrong tokens accepted per [`FAILURE_WINDOW`] (for the whole process); more are refused
/// without looking, so guessing is slow whoever guesses.
const MAX_FAILURES: usize = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// A one-time message shown on the next page (the outcome of an action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Flash {
    pub ok: bool,
    pub text: String,
}

#[derive(Debug)]
struct Session {
    token: u64,
    expires: Instant,
    flash: Option<Flash>,
}

/// The console's sessions and sign-in throttle.
#[derive(Debug)]
pub(crate) struct Console {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<VecDeque<Instant>>,
    lifetime: Mutex<Duration>,
    hasher: RandomState,
    /// One Test connection or Dry run at a time: each can take a full directory walk.
    pub(crate) probe: tokio::sync::Semaphore,
}

/// Why signing in was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignInError {
    WrongToken,
    TooManyAttempts,
    NoRandomness,
}

impl Console {
    pub(crate) fn new(settings: &Settings) -> Self {
        Console {
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(VecDeque::new()),
            lifetime: Mutex::new(settings.http.session_lifetime),
            hasher: RandomState::new(),
            probe: tokio::sync::Semaphore::new(1),
        }
    }

    /// Takes a reloaded `http.session_lifetime` for sessions opened from now on.
    pub(crate) fn apply(&self, settings: &Settings) {
        *self.lifetime.lock().unwrap_or_else(|e| e.into_inner()) = settings.http.session_lifetime;
    }

    pub(crate) fn lifetime(&self) -> Duration {
        *self.lifetime.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fingerprint(&self, token: &Secret) -> u64 {
        self.hasher.hash_one(token.expose())
    }

    /// Opens a session when `given` is the admin token; answers the new session's id.
    pub(crate) fn sign_in(&self, token: &Secret, given: &str) -> Result<String, SignInError> {
        let now = Instant::now();
        {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            while failures
                .front()
                .is_some_and(|at| now.duration_since(*at) > FAILURE_WINDOW)
            {
                failures.pop_front();
            }
            if failures.len() >= MAX_FAILURES {
                return Err(SignInError::TooManyAttempts);
            }
            if !super::super::http::constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
                failures.push_back(now);
                return Err(SignInError::WrongToken);
            }
        }
        let id = new_session_id().ok_or(SignInError::NoRandomness)?;
        let session = Session {
            token: self.fingerprint(token),
            expires: now + self.lifetime(),
            flash: None,
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), session);
        Ok(id)
    }

    /// The session of the request's cookie while it is live and was opened with `token`.
    pub(crate) fn session(&self, token: &Secret, headers: &HeaderMap) -> Option<String> {
        let id = cookie_value(headers, COOKIE)?;
        let fingerprint = self.fingerprint(token);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let live = sessions
            .get(id)
            .is_some_and(|s| s.expires > Instant::now() && s.token == fingerprint);
        if live {
            Some(id.to_owned())
        } else {
            sessions.remove(id);
            None
        }
    }

    pub(crate) fn sign_out(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub(crate) fn set_flash(&self, id: &str, flash: Flash) {
        if let Some(session) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            session.flash = Some(flash);
        }
    }

    pub(crate) fn take_flash(&self, id: &str) -> Option<Flash> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
            .and_then(|s| s.flash.take())
    }
}

/// 256 bits from the operating system's random source, as hex.
fn new_session_id() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value of a new session.
pub(crate) fn session_cookie(id: &str, lifetime: Duration) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        lifetime.as_secs()
    ))
    .ok()
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn cleared_cookie() -> HeaderValue {
    HeaderValue::from_static("syncerd_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether a POST comes from a page of this console: its `Origin` names the host it was sent
/// to (a browser always sends `Origin` with a form POST), and `Sec-Fetch-Site`, when sent, says
/// same-origin. A page elsewhere cannot make a signed-in browser act.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
    {
        return false;
    }
    let (Some(origin), Some(host)) = (text(header::ORIGIN), text(header::HOST)) else {
        return false;
    };
    let Some(origin_host) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn console() -> Console {
        Console::new(&Settings::default())
    }

    #[test]
    fn the_origin_must_name_the_host_the_post_was_sent_to() {
        let ok = headers(&[
            ("origin", "http://127.0.0.1:9464"),
            ("host", "127.0.0.1:9464"),
        ]);
        assert!(same_origin(&ok));
        let tls = headers(&[("origin", "https://sync.example"), ("host", "sync.example")]);
        assert!(same_origin(&tls));
        for bad in [
            headers(&[("host", "127.0.0.1:9464")]),
            headers(&[("origin", "null"), ("host", "127.0.0.1:9464")]),
            headers(&[
                ("origin", "http://evil.example"),
                ("host", "127.0.0.1:9464"),
            ]),
            headers(&[
                ("origin", "http://127.0.0.1:9465"),
                ("host", "127.0.0.1:9464"),
            ]),
            headers(&[
                ("origin", "http://127.0.0.1:9464"),
                ("host", "127.0.0.1:9464"),
                ("sec-fetch-site", "cross-site"),
            ]),
        ] {
            assert!(!same_origin(&bad), "{bad:?}");
        }
    }

    #[test]
    fn a_session_ends_when_the_token_changes_or_it_signs_out() {
        let console = console();
        let token = Secret::new("first-token-0123456789");
        assert_eq!(
            console.sign_in(&token, "wrong-token"),
            Err(SignInError::WrongToken)
        );
        let id = console.sign_in(&token, token.expose()).unwrap();
        assert_eq!(id.len(), 64);
        let cookie = headers(&[("cookie", &format!("a=b; {COOKIE}={id}"))]);
        assert_eq!(
            console.session(&token, &cookie).as_deref(),
            Some(id.as_str())
        );
        let other = Secret::new("second-token-0123456789");
        assert_eq!(console.session(&other, &cookie), None);
        // Dropped for good: the old token does not bring it back.
        assert_eq!(console.session(&token, &cookie), None);

        let id = console.sign_in(&token, token.expose()).unwrap();
        let cookie = headers(&[("cookie", &format!("{COOKIE}={id}"))]);
        console.sign_out(&id);
        assert_eq!(console.session(&token, &cookie), None);
    }

    #[test]
    fn wrong_tokens_are_throttled_for_everyone() {
        let console = console();
        let token = Secret::new("right-token-0123456789");
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                console.sign_in(&token, "guess"),
                Err(SignInError::WrongToken)
            );
        }
        assert_eq!(
            console.sign_in(&token, token.expose()),
            Err(SignInError::TooManyAttempts)
        );
    }

    #[test]
    fn flashes_are_shown_once() {
        let console = console();
        let token = Secret::new("right-token-0123456789");
        let id = console.sign_in(&token, token.expose()).unwrap();
        console.set_flash(
            &id,
            Flash {
                ok: true,
                text: "run started".into(),
            },
        );
        assert!(console.take_flash(&id).is_some());
        assert!(console.take_flash(&id).is_none());
    }
}
