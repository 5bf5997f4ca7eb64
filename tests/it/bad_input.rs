//! Bad input over HTTP: every malformed, invalid, unauthenticated or forbidden request gets the
//! documented 4xx `application/problem+json` answer, never a 5xx, and appends nothing.

use crate::support::{Answer, TestApp, SECRET};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use commands::Role;
use serde_json::{json, Value};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Checking answers
// ---------------------------------------------------------------------------------------------

/// Why `a` is not the problem+json answer with `status` (and `code`, when given), if it is not.
fn problem_mismatch(a: &Answer, status: u16, code: Option<&str>) -> Option<String> {
    let mut why = Vec::new();
    if a.status.is_server_error() {
        why.push(format!("a 5xx answer ({})", a.status));
    }
    if a.status.as_u16() != status {
        why.push(format!("status {} instead of {status}", a.status.as_u16()));
    }
    let ct = a
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/problem+json") {
        why.push(format!(
            "content-type {ct:?} instead of application/problem+json"
        ));
    }
    for field in ["type", "title", "detail", "code"] {
        if !a.body[field].is_string() {
            why.push(format!("no string `{field}`"));
        }
    }
    if a.body["status"].as_u64() != Some(u64::from(status)) {
        why.push(format!(
            "body status {} instead of {status}",
            a.body["status"]
        ));
    }
    if let Some(code) = code {
        if a.body["code"].as_str() != Some(code) {
            why.push(format!("code {} instead of {code:?}", a.body["code"]));
        }
    }
    if why.is_empty() {
        None
    } else {
        Some(format!(
            "{} -- answer: {} {}",
            why.join("; "),
            a.status,
            a.body
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Table-driven requests
// ---------------------------------------------------------------------------------------------

/// One bad request and the answer it must get.
struct Case {
    name: String,
    method: Method,
    path: String,
    /// The whole `Authorization` header value.
    auth: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    /// Whether to send a Content-Length header (as a real HTTP client does).
    content_length: bool,
    status: u16,
    code: Option<String>,
    /// The `field` the 400 answer must name.
    field: Option<String>,
}

impl Case {
    /// A request with a JSON body (text as given) and a bearer token.
    fn json(
        name: impl Into<String>,
        method: Method,
        path: impl Into<String>,
        token: &str,
        body: &str,
    ) -> Self {
        Self {
            name: name.into(),
            method,
            path: path.into(),
            auth: Some(format!("Bearer {token}")),
            content_type: Some("application/json".to_owned()),
            body: body.as_bytes().to_vec(),
            headers: Vec::new(),
            content_length: false,
            status: 400,
            code: Some("invalid_input".to_owned()),
            field: None,
        }
    }

    /// A POST with a JSON body.
    fn post(name: impl Into<String>, path: impl Into<String>, token: &str, body: &str) -> Self {
        Self::json(name, Method::POST, path, token, body)
    }

    /// A request without a body.
    fn bare(name: impl Into<String>, method: Method, path: impl Into<String>, token: &str) -> Self {
        let mut c = Self::json(name, method, path, token, "");
        c.content_type = None;
        c
    }

    fn expect(mut self, status: u16, code: Option<&str>) -> Self {
        self.status = status;
        self.code = code.map(str::to_owned);
        self
    }

    fn field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    fn auth(mut self, value: Option<String>) -> Self {
        self.auth = value;
        self
    }

    fn content_type(mut self, value: Option<&str>) -> Self {
        self.content_type = value.map(str::to_owned);
        self
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    fn with_content_length(mut self) -> Self {
        self.content_length = true;
        self
    }

    fn request(&self) -> Request<Body> {
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(&self.path);
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        if let Some(ct) = &self.content_type {
            req = req.header("content-type", ct);
        }
        if self.content_length {
            req = req.header("content-length", self.body.len().to_string());
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        req.body(Body::from(self.body.clone())).expect("a request")
    }
}

/// Sends every case, checks its answer and that it appended nothing; reports all failures at once.
async fn run(app: &TestApp, cases: Vec<Case>) {
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in &cases {
        let before = app.event_count().await;
        let a = app.raw(case.request()).await;
        let after = app.event_count().await;
        let mut why = problem_mismatch(&a, case.status, case.code.as_deref());
        if let Some(field) = &case.field {
            if a.body["field"].as_str() != Some(field.as_str()) && why.is_none() {
                why = Some(format!(
                    "field {} instead of {field:?} -- answer: {}",
                    a.body["field"], a.body
                ));
            }
        }
        if after != before {
            let w = format!("appended {} event(s)", after - before);
            why = Some(match why {
                Some(x) => format!("{w}; {x}"),
                None => w,
            });
        }
        if let Some(why) = why {
            failures.push(format!(
                "[{}] {} {}: {why}",
                case.name, case.method, case.path
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// A small world to send bad requests into
// ---------------------------------------------------------------------------------------------

struct World {
    app: TestApp,
    alice: Uuid,
    alice_token: String,
    alice_wallet: Uuid,
    bob: Uuid,
    bob_token: String,
    bob_wallet: Uuid,
    /// A customer subject with no account yet (for OpenAccount cases).
    newcomer_token: String,
    admin: String,
    psp: String,
    auditor: String,
}

async fn world() -> World {
    let app = TestApp::new().await;
    let (alice, alice_token) = app.customer("alice").await;
    let alice_wallet = app.wallet(&alice_token, "EUR").await;
    assert_eq!(
        app.deposit(alice_wallet, 50_000).await.status,
        StatusCode::OK
    );
    let (bob, bob_token) = app.customer("bob").await;
    let bob_wallet = app.wallet(&bob_token, "EUR").await;
    assert_eq!(app.deposit(bob_wallet, 50_000).await.status, StatusCode::OK);
    let newcomer_token = app.token("newcomer", &[Role::Customer]);
    let admin = app.token("admin", &[Role::Admin]);
    let psp = app.token("psp", &[Role::Payments]);
    let auditor = app.token("auditor", &[Role::Auditor]);
    World {
        app,
        alice,
        alice_token,
        alice_wallet,
        bob,
        bob_token,
        bob_wallet,
        newcomer_token,
        admin,
        psp,
        auditor,
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-made JWTs (HS256 / HS512 / alg none) for the authentication cases
// ---------------------------------------------------------------------------------------------

mod jwt {
    #[rustfmt::skip]
    const K256: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];
    #[rustfmt::skip]
    const H256: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    #[rustfmt::skip]
    const K512: [u64; 80] = [
        0x428a2f98d728ae22, 0x7137449123ef65cd, 0xb5c0fbcfec4d3b2f, 0xe9b5dba58189dbbc, 0x3956c25bf348b538,
        0x59f111f1b605d019, 0x923f82a4af194f9b, 0xab1c5ed5da6d8118, 0xd807aa98a3030242, 0x12835b0145706fbe,
        0x243185be4ee4b28c, 0x550c7dc3d5ffb4e2, 0x72be5d74f27b896f, 0x80deb1fe3b1696b1, 0x9bdc06a725c71235,
        0xc19bf174cf692694, 0xe49b69c19ef14ad2, 0xefbe4786384f25e3, 0x0fc19dc68b8cd5b5, 0x240ca1cc77ac9c65,
        0x2de92c6f592b0275, 0x4a7484aa6ea6e483, 0x5cb0a9dcbd41fbd4, 0x76f988da831153b5, 0x983e5152ee66dfab,
        0xa831c66d2db43210, 0xb00327c898fb213f, 0xbf597fc7beef0ee4, 0xc6e00bf33da88fc2, 0xd5a79147930aa725,
        0x06ca6351e003826f, 0x142929670a0e6e70, 0x27b70a8546d22ffc, 0x2e1b21385c26c926, 0x4d2c6dfc5ac42aed,
        0x53380d139d95b3df, 0x650a73548baf63de, 0x766a0abb3c77b2a8, 0x81c2c92e47edaee6, 0x92722c851482353b,
        0xa2bfe8a14cf10364, 0xa81a664bbc423001, 0xc24b8b70d0f89791, 0xc76c51a30654be30, 0xd192e819d6ef5218,
        0xd69906245565a910, 0xf40e35855771202a, 0x106aa07032bbd1b8, 0x19a4c116b8d2d0c8, 0x1e376c085141ab53,
        0x2748774cdf8eeb99, 0x34b0bcb5e19b48a8, 0x391c0cb3c5c95a63, 0x4ed8aa4ae3418acb, 0x5b9cca4f7763e373,
        0x682e6ff3d6b2b8a3, 0x748f82ee5defb2fc, 0x78a5636f43172f60, 0x84c87814a1f0ab72, 0x8cc702081a6439ec,
        0x90befffa23631e28, 0xa4506cebde82bde9, 0xbef9a3f7b2c67915, 0xc67178f2e372532b, 0xca273eceea26619c,
        0xd186b8c721c0c207, 0xeada7dd6cde0eb1e, 0xf57d4f7fee6ed178, 0x06f067aa72176fba, 0x0a637dc5a2c898a6,
        0x113f9804bef90dae, 0x1b710b35131c471b, 0x28db77f523047d84, 0x32caab7b40c72493, 0x3c9ebe0a15c9bebc,
        0x431d67c49c100d4c, 0x4cc5d4becb3e42b6, 0x597f299cfc657e2a, 0x5fcb6fab3ad6faec, 0x6c44198c4a475817,
    ];
    #[rustfmt::skip]
    const H512: [u64; 8] = [
        0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1, 0x510e527fade682d1,
        0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179,
    ];

    /// SHA-256 (FIPS 180-4).
    pub fn sha256(data: &[u8]) -> Vec<u8> {
        let mut msg = data.to_vec();
        let bits = (data.len() as u64).wrapping_mul(8);
        msg.push(0x80);
        while msg.len() % 64 != 56 {
            msg.push(0);
        }
        msg.extend_from_slice(&bits.to_be_bytes());
        let mut h = H256;
        for block in msg.chunks(64) {
            let mut w = [0u32; 64];
            for (i, c) in block.chunks(4).enumerate() {
                w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            }
            for i in 16..64 {
                let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
                let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
                w[i] = w[i - 16]
                    .wrapping_add(s0)
                    .wrapping_add(w[i - 7])
                    .wrapping_add(s1);
            }
            let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
            for i in 0..64 {
                let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
                let ch = (e & f) ^ (!e & g);
                let t1 = hh
                    .wrapping_add(s1)
                    .wrapping_add(ch)
                    .wrapping_add(K256[i])
                    .wrapping_add(w[i]);
                let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
                let maj = (a & b) ^ (a & c) ^ (b & c);
                let t2 = s0.wrapping_add(maj);
                hh = g;
                g = f;
                f = e;
                e = d.wrapping_add(t1);
                d = c;
                c = b;
                b = a;
                a = t1.wrapping_add(t2);
            }
            for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
                *x = x.wrapping_add(y);
            }
        }
        h.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    /// SHA-512 (FIPS 180-4).
    pub fn sha512(data: &[u8]) -> Vec<u8> {
        let mut msg = data.to_vec();
        let bits = (data.len() as u128).wrapping_mul(8);
        msg.push(0x80);
        while msg.len() % 128 != 112 {
            msg.push(0);
        }
        msg.extend_from_slice(&bits.to_be_bytes());
        let mut h = H512;
        for block in msg.chunks(128) {
            let mut w = [0u64; 80];
            for (i, c) in block.chunks(8).enumerate() {
                w[i] = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            }
            for i in 16..80 {
                let s0 = w[i - 15].rotate_right(1) ^ w[i - 15].rotate_right(8) ^ (w[i - 15] >> 7);
                let s1 = w[i - 2].rotate_right(19) ^ w[i - 2].rotate_right(61) ^ (w[i - 2] >> 6);
                w[i] = w[i - 16]
                    .wrapping_add(s0)
                    .wrapping_add(w[i - 7])
                    .wrapping_add(s1);
            }
            let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
            for i in 0..80 {
                let s1 = e.rotate_right(14) ^ e.rotate_right(18) ^ e.rotate_right(41);
                let ch = (e & f) ^ (!e & g);
                let t1 = hh
                    .wrapping_add(s1)
                    .wrapping_add(ch)
                    .wrapping_add(K512[i])
                    .wrapping_add(w[i]);
                let s0 = a.rotate_right(28) ^ a.rotate_right(34) ^ a.rotate_right(39);
                let maj = (a & b) ^ (a & c) ^ (b & c);
                let t2 = s0.wrapping_add(maj);
                hh = g;
                g = f;
                f = e;
                e = d.wrapping_add(t1);
                d = c;
                c = b;
                b = a;
                a = t1.wrapping_add(t2);
            }
            for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
                *x = x.wrapping_add(y);
            }
        }
        h.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    /// HMAC (RFC 2104) over `hash` with block size `block`.
    pub fn hmac(hash: fn(&[u8]) -> Vec<u8>, block: usize, key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut k = if key.len() > block {
            hash(key)
        } else {
            key.to_vec()
        };
        k.resize(block, 0);
        let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        inner.extend_from_slice(msg);
        let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        outer.extend_from_slice(&hash(&inner));
        hash(&outer)
    }

    /// Unpadded base64url (RFC 4648 section 5).
    pub fn b64url(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    /// A compact JWS with `header` and `claims`, signed per `alg` (HS256, HS512; anything else
    /// gets an empty signature).
    pub fn token(
        header: &serde_json::Value,
        claims: &serde_json::Value,
        alg: &str,
        key: &[u8],
    ) -> String {
        let h = b64url(header.to_string().as_bytes());
        let c = b64url(claims.to_string().as_bytes());
        let input = format!("{h}.{c}");
        let sig = match alg {
            "HS256" => b64url(&hmac(sha256, 64, key, input.as_bytes())),
            "HS512" => b64url(&hmac(sha512, 128, key, input.as_bytes())),
            _ => String::new(),
        };
        format!("{input}.{sig}")
    }

    /// Seconds since the epoch.
    pub fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hs(alg: &str, claims: Value, key: &[u8]) -> String {
    jwt::token(&json!({"alg": alg, "typ": "JWT"}), &claims, alg, key)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The hand-rolled signer behind the token cases matches RFC 4231 (and longer keys/messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_signer_of_these_tests_is_correct() {
    let (k, m) = (
        b"Jefe".as_slice(),
        b"what do ya want for nothing?".as_slice(),
    );
    assert_eq!(
        hex(&jwt::hmac(jwt::sha256, 64, k, m)),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex(&jwt::hmac(jwt::sha512, 128, k, m)),
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
    );
    let (k, m) = (vec![b'k'; 131], vec![b'x'; 300]);
    assert_eq!(
        hex(&jwt::hmac(jwt::sha256, 64, &k, &m)),
        "57ec1f7d7c37305b4811cd1772f0c8a120def70335f7e9d0de28538b608c1888"
    );
    assert_eq!(
        hex(&jwt::hmac(jwt::sha512, 128, &k, &m)),
        "306efeb17de2812b2a39ef60127a7fed151754e572278bf6dfc90ba0121e24d93b25edf45ba5ade5a268fb1a3bb2a2cba1221f9b60b8b869b6904abd03ad58c9"
    );
    assert_eq!(jwt::b64url(b"f"), "Zg");
    assert_eq!(jwt::b64url(b"fo"), "Zm8");
    assert_eq!(jwt::b64url(b"foo"), "Zm9v");
    assert_eq!(jwt::b64url(&[0xfb, 0xff]), "-_8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_json_and_unknown_fields_are_400() {
    let w = world().await;
    let (a, wa, wb) = (w.alice, w.alice_wallet, w.bob_wallet);
    let (alice, newcomer, admin, psp) = (&w.alice_token, &w.newcomer_token, &w.admin, &w.psp);
    let t = format!(r#""from_wallet":"{wa}","to_wallet":"{wb}""#);
    let cases = vec![
        Case::post(
            "truncated",
            "/v1/accounts",
            newcomer,
            r#"{"email": "n@example.com", "display_name": "#,
        ),
        Case::post("not json", "/v1/accounts", newcomer, "not json"),
        Case::post(
            "trailing comma",
            "/v1/accounts",
            newcomer,
            r#"{"email":"n@example.com","display_name":"N",}"#,
        ),
        Case::post("an array", "/v1/accounts", newcomer, "[]"),
        Case::post("a string", "/v1/accounts", newcomer, r#""hello""#),
        Case::post("null", "/v1/accounts", newcomer, "null"),
        Case::post("empty object", "/v1/accounts", newcomer, "{}"),
        Case::post("no body", "/v1/accounts", newcomer, ""),
        Case::post(
            "unknown field",
            "/v1/accounts",
            newcomer,
            r#"{"email":"n@example.com","display_name":"N","admin":true}"#,
        ),
        Case::post(
            "field in other case",
            "/v1/accounts",
            newcomer,
            r#"{"email":"n@example.com","display_name":"N","Email":"x@y.z"}"#,
        ),
        Case::post(
            "unknown field",
            "/v1/wallets",
            alice,
            r#"{"currency":"USD","colour":"red"}"#,
        ),
        Case::post("truncated", "/v1/wallets", alice, r#"{"currency":"USD""#),
        Case::post(
            "unknown field",
            format!("/v1/wallets/{wa}/deposits"),
            psp,
            r#"{"amount":100,"external_ref":"r1","note":"x"}"#,
        ),
        Case::post(
            "missing external_ref",
            format!("/v1/wallets/{wa}/deposits"),
            psp,
            r#"{"amount":100}"#,
        ),
        Case::post(
            "missing amount",
            format!("/v1/wallets/{wa}/deposits"),
            psp,
            r#"{"external_ref":"r2"}"#,
        ),
        Case::post(
            "unknown field",
            format!("/v1/wallets/{wa}/withdrawals"),
            alice,
            r#"{"amount":100,"external_ref":"w1","extra":1}"#,
        ),
        Case::post(
            "unknown field",
            "/v1/transfers",
            alice,
            &format!(r#"{{{t},"amount":1,"fee":0}}"#),
        ),
        Case::post(
            "missing amount",
            "/v1/transfers",
            alice,
            &format!(r#"{{{t}}}"#),
        ),
        Case::post(
            "duplicate field",
            "/v1/transfers",
            alice,
            &format!(r#"{{{t},"amount":1,"amount":2}}"#),
        ),
        Case::post(
            "null wallet",
            "/v1/transfers",
            alice,
            &format!(r#"{{"from_wallet":"{wa}","to_wallet":null,"amount":1}}"#),
        ),
        Case::json(
            "unknown field",
            Method::PATCH,
            format!("/v1/accounts/{a}/profile"),
            alice,
            r#"{"display_name":"A","nickname":"x"}"#,
        ),
        Case::json(
            "unknown preference",
            Method::PATCH,
            format!("/v1/accounts/{a}/profile"),
            alice,
            r#"{"preferences":{"birthday_pot":true,"colour":"red"}}"#,
        ),
        Case::json(
            "preference of wrong type",
            Method::PATCH,
            format!("/v1/accounts/{a}/profile"),
            alice,
            r#"{"preferences":{"birthday_pot":"yes"}}"#,
        ),
        Case::post(
            "unknown field",
            format!("/v1/accounts/{a}/kyc"),
            alice,
            r#"{"document_ref":"p-1","country":"DE"}"#,
        ),
        Case::post(
            "unknown field",
            format!("/v1/accounts/{a}/kyc/approve"),
            admin,
            r#"{"note":"ok"}"#,
        ),
        Case::post(
            "missing reason",
            format!("/v1/accounts/{a}/suspend"),
            admin,
            "{}",
        ),
        Case::post(
            "unknown field",
            format!("/v1/accounts/{a}/close"),
            alice,
            r#"{"reason":"bye","now":true}"#,
        ),
        Case::json(
            "unknown field",
            Method::DELETE,
            format!("/v1/accounts/{a}/personal-data"),
            admin,
            r#"{"everything":true}"#,
        ),
        Case::post(
            "unknown field",
            format!("/v1/wallets/{wa}/freeze"),
            admin,
            r#"{"reason":"x","until":"tomorrow"}"#,
        ),
        Case::post(
            "missing reason",
            format!("/v1/wallets/{wa}/freeze"),
            admin,
            "{}",
        ),
        Case::post(
            "unknown field",
            format!("/v1/wallets/{wa}/close"),
            alice,
            r#"{"force":true}"#,
        ),
    ];
    // A body that is not UTF-8 at all.
    let mut not_utf8 = Case::post("not utf-8", "/v1/accounts", newcomer, "");
    not_utf8.body = b"{\"email\":\"n@example.com\",\"display_name\":\"\xff\xfe\"}".to_vec();
    let mut cases = cases;
    cases.push(not_utf8);
    run(&w.app, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amounts_outside_the_range_and_non_integer_amounts_are_400() {
    let w = world().await;
    let (wa, wb) = (w.alice_wallet, w.bob_wallet);
    // (JSON text of the amount, whether the product sees a number it can range-check: then the
    // answer names the field)
    let amounts: &[(&str, bool)] = &[
        ("0", true),
        ("-1", true),
        ("-100", true),
        ("-9223372036854775808", true),
        ("1000000000000001", true),
        ("9223372036854775807", true),
        ("9223372036854775808", false),
        ("99999999999999999999", false),
        ("-99999999999999999999", false),
        ("1.5", false),
        ("100.0", false),
        ("1e3", false),
        ("0.01", false),
        ("\"100\"", false),
        ("null", false),
        ("true", false),
        ("[100]", false),
    ];
    let mut cases = Vec::new();
    for (amount, checked) in amounts {
        let mut group = vec![
            Case::post(
                format!("deposit {amount}"),
                format!("/v1/wallets/{wa}/deposits"),
                &w.psp,
                &format!(
                    r#"{{"amount":{amount},"external_ref":"ref-{}"}}"#,
                    Uuid::now_v7()
                ),
            ),
            Case::post(
                format!("withdraw {amount}"),
                format!("/v1/wallets/{wa}/withdrawals"),
                &w.alice_token,
                &format!(
                    r#"{{"amount":{amount},"external_ref":"out-{}"}}"#,
                    Uuid::now_v7()
                ),
            ),
            Case::post(
                format!("transfer {amount}"),
                "/v1/transfers",
                &w.alice_token,
                &format!(r#"{{"from_wallet":"{wa}","to_wallet":"{wb}","amount":{amount}}}"#),
            ),
        ];
        if *checked {
            group = group.into_iter().map(|c| c.field("amount")).collect();
        }
        cases.extend(group);
    }
    run(&w.app, cases).await;

    // The upper bound itself is a valid amount.
    let max = w
        .app
        .post(
            &format!("/v1/wallets/{wa}/deposits"),
            &w.psp,
            json!({"amount": 1_000_000_000_000_000_i64, "external_ref": "max"}),
        )
        .await;
    assert_eq!(max.status, StatusCode::OK, "{:?}", max.body);
    assert_eq!(
        w.app.wallet_view(wa).await["balance"],
        json!(1_000_000_000_050_000_i64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_currencies_are_400() {
    let w = world().await;
    let mut cases = Vec::new();
    for c in ["eur", "EURO", "ABC", "", "EU", "E1R", " EUR", "EUR ", "€"] {
        let body = json!({"currency": c}).to_string();
        cases.push(
            Case::post(
                format!("currency {c:?}"),
                "/v1/wallets",
                &w.alice_token,
                &body,
            )
            .field("currency"),
        );
        let body = json!({"currency": c, "owner": w.bob}).to_string();
        cases.push(
            Case::post(
                format!("admin, currency {c:?}"),
                "/v1/wallets",
                &w.admin,
                &body,
            )
            .field("currency"),
        );
    }
    for c in ["978", "null", "[\"EUR\"]", "{\"code\":\"EUR\"}"] {
        cases.push(Case::post(
            format!("currency {c}"),
            "/v1/wallets",
            &w.alice_token,
            &format!(r#"{{"currency":{c}}}"#),
        ));
    }
    run(&w.app, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_content_type_is_415() {
    let w = world().await;
    let (wa, wb) = (w.alice_wallet, w.bob_wallet);
    let wallet = r#"{"currency":"USD"}"#;
    let deposit = r#"{"amount":100,"external_ref":"ct-1"}"#;
    let transfer = format!(r#"{{"from_wallet":"{wa}","to_wallet":"{wb}","amount":100}}"#);
    let mut cases = Vec::new();
    for ct in [
        Some("text/plain"),
        None,
        Some("application/x-www-form-urlencoded"),
        Some("application/xml"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let name = format!("content-type {ct:?}");
        cases.push(
            Case::post(&name, "/v1/wallets", &w.alice_token, wallet)
                .content_type(ct)
                .expect(415, Some("unsupported_media_type")),
        );
        cases.push(
            Case::post(&name, format!("/v1/wallets/{wa}/deposits"), &w.psp, deposit)
                .content_type(ct)
                .expect(415, Some("unsupported_media_type")),
        );
        cases.push(
            Case::post(&name, "/v1/transfers", &w.alice_token, &transfer)
                .content_type(ct)
                .expect(415, Some("unsupported_media_type")),
        );
    }
    run(&w.app, cases).await;

    // JSON with parameters is JSON.
    let ok = Case::post("json with charset", "/v1/wallets", &w.alice_token, wallet)
        .content_type(Some("application/json; charset=utf-8"));
    let a = w.app.raw(ok.request()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
}

/// Oversized command bodies of `sizes`, sent with and/or without a Content-Length header.
fn oversized_cases(w: &World, sizes: &[(usize, &str)], lengths: &[bool]) -> Vec<Case> {
    let wa = w.alice_wallet;
    let padded = |bytes: usize| format!(r#"{{"currency":"USD","pad":"{}"}}"#, "x".repeat(bytes));
    let big_ref =
        |bytes: usize| format!(r#"{{"amount":100,"external_ref":"{}"}}"#, "r".repeat(bytes));
    let mut cases = Vec::new();
    for (size, label) in sizes {
        for with_length in lengths {
            let name = format!("{label}, content-length header {with_length}");
            let mut c1 = Case::post(&name, "/v1/wallets", &w.alice_token, &padded(*size))
                .expect(413, Some("body_too_large"));
            let mut c2 = Case::post(
                &name,
                format!("/v1/wallets/{wa}/deposits"),
                &w.psp,
                &big_ref(*size),
            )
            .expect(413, Some("body_too_large"));
            if *with_length {
                c1 = c1.with_content_length();
                c2 = c2.with_content_length();
            }
            cases.push(c1);
            cases.push(c2);
        }
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_body_is_413() {
    let w = world().await;
    let mut cases = oversized_cases(
        &w,
        &[
            (64 * 1024 + 1, "64 KiB + 1"),
            (100 * 1024, "100 KiB"),
            (200 * 1024, "200 KiB"),
        ],
        &[false, true],
    );
    // Streamed (no Content-Length), however large.
    cases.extend(oversized_cases(
        &w,
        &[(300 * 1024, "300 KiB"), (2 * 1024 * 1024, "2 MiB")],
        &[false],
    ));
    run(&w.app, cases).await;

    // Just under the limit is read (and then judged on its content).
    let under = format!(r#"{{"currency":"USD","pad":"{}"}}"#, "x".repeat(60 * 1024));
    let a = w
        .app
        .raw(
            Case::post("60 KiB", "/v1/wallets", &w.alice_token, &under)
                .with_content_length()
                .request(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    assert_eq!(a.body["code"], "invalid_input");
}

/// A body over 256 KiB that announces its size in Content-Length (what every real client does)
/// is refused by the outer `RequestBodyLimitLayer` before anything reads it: still a 413
/// problem+json.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_very_large_body_with_content_length_is_a_413_problem_too() {
    let w = world().await;
    let cases = oversized_cases(
        &w,
        &[
            (256 * 1024 + 1, "256 KiB + 1"),
            (300 * 1024, "300 KiB"),
            (2 * 1024 * 1024, "2 MiB"),
        ],
        &[true],
    );
    run(&w.app, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_or_bad_credentials_are_401() {
    let w = world().await;
    let (wa, wb) = (w.alice_wallet, w.bob_wallet);
    let now = jwt::now();
    let claims = |exp: i64| json!({"sub": "alice", "roles": ["customer"], "exp": exp, "iat": now});

    // Control: a token this test signs by hand with the right secret and HS256 is accepted, so
    // the refusals below are about what they change.
    let good = hs("HS256", claims(now + 600), SECRET);
    let a = w.app.get(&format!("/v1/wallets/{wa}"), &good).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "a valid hand-signed token: {:?}",
        a.body
    );

    let valid_payload = good.split('.').nth(1).unwrap_or_default().to_owned();
    let good_sig = good.split('.').nth(2).unwrap_or_default().to_owned();
    let none_header = jwt::b64url(br#"{"alg":"none"}"#);
    let none_typ_header = jwt::b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let admin_payload = jwt::b64url(
        json!({"sub": "alice", "roles": ["admin"], "exp": now + 600})
            .to_string()
            .as_bytes(),
    );
    let bearer = |t: &str| Some(format!("Bearer {t}"));

    let auths: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        (
            "expired 120 s ago",
            bearer(&hs("HS256", claims(now - 120), SECRET)),
        ),
        (
            "expired a day ago",
            bearer(&hs("HS256", claims(now - 86_400), SECRET)),
        ),
        (
            "alg none, no signature",
            bearer(&format!("{none_header}.{valid_payload}.")),
        ),
        (
            "alg none with typ, no signature",
            bearer(&format!("{none_typ_header}.{valid_payload}.")),
        ),
        (
            "alg none, the HS256 signature kept",
            bearer(&format!("{none_header}.{valid_payload}.{good_sig}")),
        ),
        (
            "signed with another secret",
            bearer(&hs("HS256", claims(now + 600), b"another-secret-entirely")),
        ),
        (
            "HS512 with the right secret",
            bearer(&hs("HS512", claims(now + 600), SECRET)),
        ),
        (
            "payload swapped for an admin one",
            bearer(&format!(
                "{}.{admin_payload}.{good_sig}",
                good.split('.').next().unwrap_or_default()
            )),
        ),
        (
            "no exp claim",
            bearer(&hs(
                "HS256",
                json!({"sub": "alice", "roles": ["customer"]}),
                SECRET,
            )),
        ),
        (
            "no sub claim",
            bearer(&hs(
                "HS256",
                json!({"roles": ["customer"], "exp": now + 600}),
                SECRET,
            )),
        ),
        (
            "empty sub",
            bearer(&hs(
                "HS256",
                json!({"sub": "", "roles": ["customer"], "exp": now + 600}),
                SECRET,
            )),
        ),
        (
            "exp as a string",
            bearer(&hs(
                "HS256",
                json!({"sub": "alice", "roles": ["customer"], "exp": "tomorrow"}),
                SECRET,
            )),
        ),
        ("garbage token", bearer("garbage")),
        ("three garbage parts", bearer("a.b.c")),
        ("empty token", Some("Bearer ".to_owned())),
        ("the token without a scheme", Some(good.clone())),
        (
            "Basic credentials",
            Some("Basic YWxpY2U6c2VjcmV0".to_owned()),
        ),
        (
            "a device credential on a bearer route",
            Some(format!("Device {}.secret", Uuid::now_v7())),
        ),
        ("garbage header", Some("garbage".to_owned())),
    ];
    let mut cases = Vec::new();
    for (label, auth) in auths {
        cases.push(
            Case::post(label, "/v1/wallets", "x", r#"{"currency":"USD"}"#)
                .auth(auth.clone())
                .expect(401, None),
        );
        cases.push(
            Case::post(
                label,
                "/v1/transfers",
                "x",
                &format!(r#"{{"from_wallet":"{wa}","to_wallet":"{wb}","amount":1}}"#),
            )
            .auth(auth.clone())
            .expect(401, None),
        );
        cases.push(
            Case::bare(label, Method::GET, format!("/v1/wallets/{wa}"), "x")
                .auth(auth.clone())
                .expect(401, None),
        );
        cases.push(
            Case::bare(label, Method::GET, format!("/v1/accounts/{}", w.alice), "x")
                .auth(auth)
                .expect(401, None),
        );
    }
    run(&w.app, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_owners_aggregates_are_403() {
    let w = world().await;
    let (a, wa, wb) = (w.alice, w.alice_wallet, w.bob_wallet);
    let bob = &w.bob_token;
    let forbidden = Some("forbidden");
    let cases = vec![
        Case::post(
            "withdraw from alice's wallet",
            format!("/v1/wallets/{wa}/withdrawals"),
            bob,
            r#"{"amount":100,"external_ref":"steal"}"#,
        )
        .expect(403, forbidden),
        Case::post(
            "close alice's wallet",
            format!("/v1/wallets/{wa}/close"),
            bob,
            "{}",
        )
        .expect(403, forbidden),
        Case::bare(
            "close alice's wallet, no body",
            Method::POST,
            format!("/v1/wallets/{wa}/close"),
            bob,
        )
        .expect(403, forbidden),
        Case::bare(
            "GET alice's wallet",
            Method::GET,
            format!("/v1/wallets/{wa}"),
            bob,
        )
        .expect(403, forbidden),
        Case::post(
            "transfer out of alice's wallet",
            "/v1/transfers",
            bob,
            &format!(r#"{{"from_wallet":"{wa}","to_wallet":"{wb}","amount":100}}"#),
        )
        .expect(403, forbidden),
        Case::bare(
            "GET alice's account",
            Method::GET,
            format!("/v1/accounts/{a}"),
            bob,
        )
        .expect(403, forbidden),
        Case::json(
            "update alice's profile",
            Method::PATCH,
            format!("/v1/accounts/{a}/profile"),
            bob,
            r#"{"display_name":"Mallory"}"#,
        )
        .expect(403, forbidden),
        Case::post(
            "submit KYC for alice",
            format!("/v1/accounts/{a}/kyc"),
            bob,
            r#"{"document_ref":"fake"}"#,
        )
        .expect(403, forbidden),
        Case::post(
            "close alice's account",
            format!("/v1/accounts/{a}/close"),
            bob,
            r#"{"reason":"mine now"}"#,
        )
        .expect(403, forbidden),
        Case::post(
            "open a wallet for alice",
            "/v1/wallets",
            bob,
            &format!(r#"{{"currency":"USD","owner":"{a}"}}"#),
        )
        .expect(403, forbidden),
        Case::post(
            "open an account for another subject",
            "/v1/accounts",
            bob,
            r#"{"email":"x@example.com","display_name":"X","subject":"someone"}"#,
        )
        .expect(403, forbidden),
    ];
    run(&w.app, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_ids_are_404() {
    let w = world().await;
    let (wa, wb) = (w.alice_wallet, w.bob_wallet);
    let nf = Some("not_found");
    let mut cases = Vec::new();
    // A fresh UUIDv7 per case, so no case can warm up another's id.
    let u = Uuid::now_v7;
    for (who, token) in [
        ("admin", &w.admin),
        ("auditor", &w.auditor),
        ("alice", &w.alice_token),
    ] {
        cases.push(
            Case::bare(
                format!("GET unknown wallet as {who}"),
                Method::GET,
                format!("/v1/wallets/{}", u()),
                token,
            )
            .expect(404, nf),
        );
        cases.push(
            Case::bare(
                format!("GET unknown account as {who}"),
                Method::GET,
                format!("/v1/accounts/{}", u()),
                token,
            )
            .expect(404, nf),
        );
    }
    cases.extend([
        Case::post(
            "deposit",
            format!("/v1/wallets/{}/deposits", u()),
            &w.psp,
            r#"{"amount":100,"external_ref":"nf-1"}"#,
        )
        .expect(404, nf),
        Case::post(
            "withdraw",
            format!("/v1/wallets/{}/withdrawals", u()),
            &w.alice_token,
            r#"{"amount":100,"external_ref":"nf-2"}"#,
        )
        .expect(404, nf),
        Case::post(
            "freeze",
            format!("/v1/wallets/{}/freeze", u()),
            &w.admin,
            r#"{"reason":"x"}"#,
        )
        .expect(404, nf),
        Case::post(
            "unfreeze",
            format!("/v1/wallets/{}/unfreeze", u()),
            &w.admin,
            r#"{"reason":"x"}"#,
        )
        .expect(404, nf),
        Case::post(
            "close wallet",
            format!("/v1/wallets/{}/close", u()),
            &w.alice_token,
            "{}",
        )
        .expect(404, nf),
        Case::post(
            "transfer to unknown",
            "/v1/transfers",
            &w.alice_token,
            &format!(
                r#"{{"from_wallet":"{wa}","to_wallet":"{}","amount":1}}"#,
                u()
            ),
        )
        .expect(404, nf),
        Case::post(
            "transfer from unknown",
            "/v1/transfers",
            &w.alice_token,
            &format!(
                r#"{{"from_wallet":"{}","to_wallet":"{wb}","amount":1}}"#,
                u()
            ),
        )
        .expect(404, nf),
        Case::post(
            "admin opens a wallet for an unknown owner",
            "/v1/wallets",
            &w.admin,
            &format!(r#"{{"currency":"EUR","owner":"{}"}}"#, u()),
        )
        .expect(404, nf),
        Case::post(
            "suspend",
            format!("/v1/accounts/{}/suspend", u()),
            &w.admin,
            r#"{"reason":"x"}"#,
        )
        .expect(404, nf),
        Case::post(
            "reinstate",
            format!("/v1/accounts/{}/reinstate", u()),
            &w.admin,
            "{}",
        )
        .expect(404, nf),
        Case::post(
            "approve KYC",
            format!("/v1/accounts/{}/kyc/approve", u()),
            &w.admin,
            "{}",
        )
        .expect(404, nf),
        Case::post(
            "reject KYC",
            format!("/v1/accounts/{}/kyc/reject", u()),
            &w.admin,
            r#"{"reason":"x"}"#,
        )
        .expect(404, nf),
        Case::post(
            "close account",
            format!("/v1/accounts/{}/close", u()),
            &w.admin,
            r#"{"reason":"x"}"#,
        )
        .expect(404, nf),
        Case::bare(
            "erase personal data",
            Method::DELETE,
            format!("/v1/accounts/{}/personal-data", u()),
            &w.admin,
        )
        .expect(404, nf),
    ]);
    run(&w.app, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_uuid_path_ids_are_400() {
    let w = world().await;
    let (wa, wb) = (w.alice_wallet, w.bob_wallet);
    let mut cases = Vec::new();
    for bad in [
        "not-a-uuid",
        "123",
        "0",
        "00000000-0000-0000-0000-00000000000g",
        "%20",
        "null",
    ] {
        cases.extend([
            Case::bare(
                format!("GET wallet {bad}"),
                Method::GET,
                format!("/v1/wallets/{bad}"),
                &w.admin,
            ),
            Case::bare(
                format!("GET account {bad}"),
                Method::GET,
                format!("/v1/accounts/{bad}"),
                &w.admin,
            ),
            Case::post(
                format!("deposit {bad}"),
                format!("/v1/wallets/{bad}/deposits"),
                &w.psp,
                r#"{"amount":100,"external_ref":"p-1"}"#,
            ),
            Case::post(
                format!("withdraw {bad}"),
                format!("/v1/wallets/{bad}/withdrawals"),
                &w.alice_token,
                r#"{"amount":100,"external_ref":"p-2"}"#,
            ),
            Case::post(
                format!("freeze {bad}"),
                format!("/v1/wallets/{bad}/freeze"),
                &w.admin,
                r#"{"reason":"x"}"#,
            ),
            Case::post(
                format!("close wallet {bad}"),
                format!("/v1/wallets/{bad}/close"),
                &w.alice_token,
                "{}",
            ),
            Case::json(
                format!("profile {bad}"),
                Method::PATCH,
                format!("/v1/accounts/{bad}/profile"),
                &w.alice_token,
                r#"{"display_name":"A"}"#,
            ),
            Case::post(
                format!("kyc {bad}"),
                format!("/v1/accounts/{bad}/kyc"),
                &w.alice_token,
                r#"{"document_ref":"d"}"#,
            ),
            Case::post(
                format!("suspend {bad}"),
                format!("/v1/accounts/{bad}/suspend"),
                &w.admin,
                r#"{"reason":"x"}"#,
            ),
            Case::bare(
                format!("erase {bad}"),
                Method::DELETE,
                format!("/v1/accounts/{bad}/personal-data"),
                &w.admin,
            ),
        ]);
    }
    // Ids in bodies are checked too.
    cases.extend([
        Case::post(
            "transfer from a non-UUID",
            "/v1/transfers",
            &w.alice_token,
            &format!(r#"{{"from_wallet":"abc","to_wallet":"{wb}","amount":1}}"#),
        ),
        Case::post(
            "transfer to a non-UUID",
            "/v1/transfers",
            &w.alice_token,
            &format!(r#"{{"from_wallet":"{wa}","to_wallet":42,"amount":1}}"#),
        ),
        Case::post(
            "wallet owner not a UUID",
            "/v1/wallets",
            &w.admin,
            r#"{"currency":"USD","owner":"bob"}"#,
        ),
    ]);
    run(&w.app, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlong_strings_and_bad_emails_are_400() {
    let w = world().await;
    let (a, wa, wb) = (w.alice, w.alice_wallet, w.bob_wallet);
    let open = |email: &str, name: &str| json!({"email": email, "display_name": name}).to_string();
    let n101 = "n".repeat(101);
    let e101 = "é".repeat(101);
    let mut cases = vec![
        Case::post(
            "display_name 101",
            "/v1/accounts",
            &w.newcomer_token,
            &open("n@example.com", &n101),
        )
        .field("display_name"),
        Case::post(
            "display_name 101 (2-byte chars)",
            "/v1/accounts",
            &w.newcomer_token,
            &open("n@example.com", &e101),
        )
        .field("display_name"),
        Case::post(
            "display_name empty",
            "/v1/accounts",
            &w.newcomer_token,
            &open("n@example.com", ""),
        )
        .field("display_name"),
        Case::post(
            "display_name blank",
            "/v1/accounts",
            &w.newcomer_token,
            &open("n@example.com", "   "),
        )
        .field("display_name"),
        Case::post(
            "display_name with a control char",
            "/v1/accounts",
            &w.newcomer_token,
            &open("n@example.com", "a\u{7}b"),
        )
        .field("display_name"),
        Case::post(
            "bad country",
            "/v1/accounts",
            &w.newcomer_token,
            r#"{"email":"n@example.com","display_name":"N","country":"germany"}"#,
        )
        .field("country"),
        Case::post(
            "bad birth_date",
            "/v1/accounts",
            &w.newcomer_token,
            r#"{"email":"n@example.com","display_name":"N","birth_date":"2001-13-01"}"#,
        ),
        Case::json(
            "profile display_name 101",
            Method::PATCH,
            format!("/v1/accounts/{a}/profile"),
            &w.alice_token,
            &json!({"display_name": n101}).to_string(),
        )
        .field("display_name"),
        Case::json(
            "profile display_name empty",
            Method::PATCH,
            format!("/v1/accounts/{a}/profile"),
            &w.alice_token,
            r#"{"display_name":""}"#,
        )
        .field("display_name"),
        Case::post(
            "external_ref 101 on deposit",
            format!("/v1/wallets/{wa}/deposits"),
            &w.psp,
            &json!({"amount": 1, "external_ref": "r".repeat(101)}).to_string(),
        )
        .field("external_ref"),
        Case::post(
            "external_ref empty on deposit",
            format!("/v1/wallets/{wa}/deposits"),
            &w.psp,
            r#"{"amount":1,"external_ref":""}"#,
        )
        .field("external_ref"),
        Case::post(
            "external_ref 101 on withdrawal",
            format!("/v1/wallets/{wa}/withdrawals"),
            &w.alice_token,
            &json!({"amount": 1, "external_ref": "r".repeat(101)}).to_string(),
        )
        .field("external_ref"),
        Case::post(
            "memo 201",
            "/v1/transfers",
            &w.alice_token,
            &json!({"from_wallet": wa, "to_wallet": wb, "amount": 1, "memo": "m".repeat(201)})
                .to_string(),
        )
        .field("memo"),
        Case::post(
            "reason 501 on freeze",
            format!("/v1/wallets/{wa}/freeze"),
            &w.admin,
            &json!({"reason": "r".repeat(501)}).to_string(),
        )
        .field("reason"),
        Case::post(
            "reason empty on suspend",
            format!("/v1/accounts/{a}/suspend"),
            &w.admin,
            r#"{"reason":""}"#,
        )
        .field("reason"),
        Case::post(
            "document_ref 201",
            format!("/v1/accounts/{a}/kyc"),
            &w.alice_token,
            &json!({"document_ref": "d".repeat(201)}).to_string(),
        )
        .field("document_ref"),
    ];
    let long_email = format!("{}@example.com", "a".repeat(250));
    for email in [
        "nobody",
        "a b@example.com",
        "a@b",
        "@example.com",
        "a@",
        "a@.com",
        "a@example.",
        "a@@example.com",
        "",
        long_email.as_str(),
    ] {
        cases.push(
            Case::post(
                format!("email {email:?}"),
                "/v1/accounts",
                &w.newcomer_token,
                &open(email, "N"),
            )
            .field("email"),
        );
    }
    run(&w.app, cases).await;

    // The limits themselves are accepted (counted in characters, not bytes).
    let a1 = w
        .app
        .send(
            Method::PATCH,
            &format!("/v1/accounts/{a}/profile"),
            Some(&w.alice_token),
            Some(json!({"display_name": "é".repeat(100)})),
            &[],
        )
        .await;
    assert_eq!(
        a1.status,
        StatusCode::OK,
        "display_name of 100 characters: {:?}",
        a1.body
    );
    let a2 = w
        .app
        .post(
            &format!("/v1/wallets/{wa}/deposits"),
            &w.psp,
            json!({"amount": 1, "external_ref": "r".repeat(100)}),
        )
        .await;
    assert_eq!(
        a2.status,
        StatusCode::OK,
        "external_ref of 100 characters: {:?}",
        a2.body
    );
    let a3 = w
        .app
        .post(
            "/v1/transfers",
            &w.alice_token,
            json!({"from_wallet": wa, "to_wallet": wb, "amount": 1, "memo": "m".repeat(200)}),
        )
        .await;
    assert_eq!(
        a3.status,
        StatusCode::CREATED,
        "memo of 200 characters: {:?}",
        a3.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_idempotency_keys_and_if_match_headers_are_400() {
    let w = world().await;
    let (wa, wb) = (w.alice_wallet, w.bob_wallet);
    let transfer = format!(r#"{{"from_wallet":"{wa}","to_wallet":"{wb}","amount":1}}"#);
    let deposit = r#"{"amount":100,"external_ref":"hdr-1"}"#;
    let mut cases = Vec::new();
    for key in [
        "k".repeat(201),
        "k".repeat(5000),
        String::new(),
        "two words".to_owned(),
    ] {
        let label = format!("Idempotency-Key of {} chars", key.len());
        cases.push(
            Case::post(&label, "/v1/transfers", &w.alice_token, &transfer)
                .header("idempotency-key", key.clone())
                .field("Idempotency-Key"),
        );
        cases.push(
            Case::post(
                &label,
                "/v1/wallets",
                &w.alice_token,
                r#"{"currency":"USD"}"#,
            )
            .header("idempotency-key", key.clone())
            .field("Idempotency-Key"),
        );
        cases.push(
            Case::post(
                &label,
                format!("/v1/wallets/{wa}/deposits"),
                &w.psp,
                deposit,
            )
            .header("idempotency-key", key)
            .field("Idempotency-Key"),
        );
    }
    for tag in [
        "abc",
        "\"abc\"",
        "\"-1\"",
        "",
        "\"1.5\"",
        "\"99999999999999999999\"",
    ] {
        let label = format!("If-Match {tag:?}");
        cases.push(
            Case::post(&label, "/v1/transfers", &w.alice_token, &transfer)
                .header("if-match", tag)
                .field("If-Match"),
        );
        cases.push(
            Case::post(
                &label,
                format!("/v1/wallets/{wa}/deposits"),
                &w.psp,
                deposit,
            )
            .header("if-match", tag)
            .field("If-Match"),
        );
        cases.push(
            Case::json(
                &label,
                Method::PATCH,
                format!("/v1/accounts/{}/profile", w.alice),
                &w.alice_token,
                r#"{"display_name":"A"}"#,
            )
            .header("if-match", tag)
            .field("If-Match"),
        );
    }
    run(&w.app, cases).await;

    // A key of 200 characters is fine.
    let ok = w
        .app
        .send(
            Method::POST,
            "/v1/transfers",
            Some(&w.alice_token),
            Some(json!({"from_wallet": wa, "to_wallet": wb, "amount": 1})),
            &[("idempotency-key", &"k".repeat(200))],
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{:?}", ok.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_under_the_wrong_role_are_403() {
    let w = world().await;
    let (a, wa, wb) = (w.alice, w.alice_wallet, w.bob_wallet);
    let app = &w.app;
    // Alice's own subject with other roles than customer.
    let alice_as_auditor = app.token("alice", &[Role::Auditor]);
    let alice_as_payments = app.token("alice", &[Role::Payments]);
    let alice_as_arbiter = app.token("alice", &[Role::Arbiter]);
    let alice_no_roles = app.token("alice", &[]);
    let alice_unknown_role = hs(
        "HS256",
        json!({"sub": "alice", "roles": ["superuser", "root"], "exp": jwt::now() + 600}),
        SECRET,
    );
    let fresh_auditor = app.token("auditor-without-account", &[Role::Auditor]);

    let cmds = |label: &str, token: &str| -> Vec<Case> {
        vec![
            Case::post(
                format!("{label}: open account"),
                "/v1/accounts",
                token,
                r#"{"email":"z@example.com","display_name":"Z"}"#,
            ),
            Case::post(
                format!("{label}: open wallet"),
                "/v1/wallets",
                token,
                r#"{"currency":"USD"}"#,
            ),
            Case::post(
                format!("{label}: open wallet for alice"),
                "/v1/wallets",
                token,
                &format!(r#"{{"currency":"USD","owner":"{a}"}}"#),
            ),
            Case::post(
                format!("{label}: withdraw"),
                format!("/v1/wallets/{wa}/withdrawals"),
                token,
                r#"{"amount":1,"external_ref":"role-w"}"#,
            ),
            Case::post(
                format!("{label}: transfer"),
                "/v1/transfers",
                token,
                &format!(r#"{{"from_wallet":"{wa}","to_wallet":"{wb}","amount":1}}"#),
            ),
            Case::post(
                format!("{label}: close wallet"),
                format!("/v1/wallets/{wa}/close"),
                token,
                "{}",
            ),
            Case::post(
                format!("{label}: freeze"),
                format!("/v1/wallets/{wa}/freeze"),
                token,
                r#"{"reason":"x"}"#,
            ),
            Case::post(
                format!("{label}: unfreeze"),
                format!("/v1/wallets/{wa}/unfreeze"),
                token,
                r#"{"reason":"x"}"#,
            ),
            Case::json(
                format!("{label}: profile"),
                Method::PATCH,
                format!("/v1/accounts/{a}/profile"),
                token,
                r#"{"display_name":"Q"}"#,
            ),
            Case::post(
                format!("{label}: submit KYC"),
                format!("/v1/accounts/{a}/kyc"),
                token,
                r#"{"document_ref":"d"}"#,
            ),
            Case::post(
                format!("{label}: approve KYC"),
                format!("/v1/accounts/{a}/kyc/approve"),
                token,
                "{}",
            ),
            Case::post(
                format!("{label}: reject KYC"),
                format!("/v1/accounts/{a}/kyc/reject"),
                token,
                r#"{"reason":"x"}"#,
            ),
            Case::post(
                format!("{label}: suspend"),
                format!("/v1/accounts/{a}/suspend"),
                token,
                r#"{"reason":"x"}"#,
            ),
            Case::post(
                format!("{label}: reinstate"),
                format!("/v1/accounts/{a}/reinstate"),
                token,
                "{}",
            ),
            Case::post(
                format!("{label}: close account"),
                format!("/v1/accounts/{a}/close"),
                token,
                r#"{"reason":"x"}"#,
            ),
            Case::bare(
                format!("{label}: erase"),
                Method::DELETE,
                format!("/v1/accounts/{a}/personal-data"),
                token,
            ),
        ]
        .into_iter()
        .map(|c| c.expect(403, None))
        .collect()
    };
    let deposit = |label: &str, token: &str| {
        Case::post(
            format!("{label}: deposit"),
            format!("/v1/wallets/{wa}/deposits"),
            token,
            &format!(r#"{{"amount":1,"external_ref":"role-{}"}}"#, Uuid::now_v7()),
        )
        .expect(403, None)
    };

    let mut cases = Vec::new();
    // An auditor issues no command at all, whoever's subject it carries.
    cases.extend(cmds("auditor", &w.auditor));
    cases.extend(cmds("auditor without account", &fresh_auditor));
    cases.extend(cmds("alice as auditor", &alice_as_auditor));
    cases.extend(cmds("alice without roles", &alice_no_roles));
    cases.extend(cmds("alice with unknown roles", &alice_unknown_role));
    for (label, token) in [
        ("auditor", &w.auditor),
        ("alice as auditor", &alice_as_auditor),
        ("alice without roles", &alice_no_roles),
        ("customer alice", &w.alice_token),
        ("arbiter", &alice_as_arbiter),
    ] {
        cases.push(deposit(label, token));
    }
    // Payments may deposit and nothing else of an owner's.
    for c in cmds("alice as payments", &alice_as_payments) {
        cases.push(c);
    }
    // A customer cannot do what is the admin's.
    let alice = &w.alice_token;
    cases.extend([
        Case::post(
            "customer freezes own wallet",
            format!("/v1/wallets/{wa}/freeze"),
            alice,
            r#"{"reason":"x"}"#,
        )
        .expect(403, Some("forbidden")),
        Case::post(
            "customer unfreezes own wallet",
            format!("/v1/wallets/{wa}/unfreeze"),
            alice,
            r#"{"reason":"x"}"#,
        )
        .expect(403, Some("forbidden")),
        Case::post(
            "customer approves own KYC",
            format!("/v1/accounts/{a}/kyc/approve"),
            alice,
            "{}",
        )
        .expect(403, Some("forbidden")),
        Case::post(
            "customer rejects own KYC",
            format!("/v1/accounts/{a}/kyc/reject"),
            alice,
            r#"{"reason":"x"}"#,
        )
        .expect(403, Some("forbidden")),
        Case::post(
            "customer suspends self",
            format!("/v1/accounts/{a}/suspend"),
            alice,
            r#"{"reason":"x"}"#,
        )
        .expect(403, Some("forbidden")),
        Case::post(
            "customer reinstates self",
            format!("/v1/accounts/{a}/reinstate"),
            alice,
            "{}",
        )
        .expect(403, Some("forbidden")),
        Case::bare(
            "customer erases own data",
            Method::DELETE,
            format!("/v1/accounts/{a}/personal-data"),
            alice,
        )
        .expect(403, Some("forbidden")),
        Case::post(
            "customer deposits",
            format!("/v1/wallets/{wa}/deposits"),
            alice,
            r#"{"amount":1,"external_ref":"self-made"}"#,
        )
        .expect(403, Some("forbidden")),
    ]);
    run(app, cases).await;

    // The auditor still reads.
    assert_eq!(
        app.get(&format!("/v1/wallets/{wa}"), &w.auditor)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_routes_and_methods_are_problems_too() {
    let w = world().await;
    let wa = w.alice_wallet;
    let cases = vec![
        Case::bare("unknown path", Method::GET, "/v1/nothing-here", &w.admin).expect(404, None),
        Case::bare(
            "unknown nested path",
            Method::POST,
            format!("/v1/wallets/{wa}/teleport"),
            &w.admin,
        )
        .expect(404, None),
        Case::bare(
            "DELETE a wallet",
            Method::DELETE,
            format!("/v1/wallets/{wa}"),
            &w.admin,
        )
        .expect(405, None),
        Case::bare(
            "PUT a wallet",
            Method::PUT,
            format!("/v1/wallets/{wa}"),
            &w.admin,
        )
        .expect(405, None),
        Case::bare(
            "GET a command route",
            Method::GET,
            format!("/v1/wallets/{wa}/deposits"),
            &w.admin,
        )
        .expect(405, None),
        Case::bare(
            "POST the profile",
            Method::POST,
            format!("/v1/accounts/{}/profile", w.alice),
            &w.alice_token,
        )
        .expect(405, None),
    ];
    run(&w.app, cases).await;
}

/// No movement may exceed 10^15 and no balance 10^18 (`MAX_BALANCE`): the credit that would
/// pass it is refused as a 4xx problem (`balance_limit`) and appends nothing, never a panic or
/// a wrapped balance. (1,001 deposits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposit_that_would_overflow_the_balance_is_refused_not_a_panic() {
    const MAX: i64 = 1_000_000_000_000_000;
    let app = std::sync::Arc::new(TestApp::new().await);
    let (_, token) = app.customer("rich").await;
    let wallet = app.wallet(&token, "EUR").await;
    let psp = app.token("psp", &[Role::Payments]);
    let path = format!("/v1/wallets/{wallet}/deposits");
    let full = domain::wallet::MAX_BALANCE / MAX; // 1,000 deposits of 10^15 fit
    for i in 0..full {
        let a = app
            .post(
                &path,
                &psp,
                json!({"amount": MAX, "external_ref": format!("fill-{i}")}),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "deposit {i}: {:?}", a.body);
    }
    let before = app.event_count().await;
    let view = app.wallet_view(wallet).await;
    assert_eq!(view["balance"], json!(full * MAX));

    // The one that no longer fits: run it on its own task so a panic is reported, not fatal.
    let (app2, path2, psp2) = (app.clone(), path.clone(), psp.clone());
    let answer = tokio::spawn(async move {
        app2.post(
            &path2,
            &psp2,
            json!({"amount": MAX, "external_ref": "one-too-many"}),
        )
        .await
    })
    .await;
    let a = match answer {
        Ok(a) => a,
        Err(e) => panic!("the request panicked instead of answering: {e}"),
    };
    assert!(
        a.status.is_client_error(),
        "a 4xx, got {} {:?}",
        a.status,
        a.body
    );
    if let Some(why) = problem_mismatch(&a, a.status.as_u16(), None) {
        panic!("{why}");
    }
    assert_eq!(app.event_count().await, before, "nothing appended");
    let after = app.wallet_view(wallet).await;
    assert_eq!(
        after["balance"],
        json!(full * MAX),
        "the balance did not wrap"
    );
}

/// A 400 names the offending field: unknown, missing, or of the wrong type.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_400_names_the_field() {
    let app = TestApp::new().await;
    let (_, token) = app.customer("fieldy").await;
    let wallet = app.wallet(&token, "EUR").await;
    let path = format!("/v1/wallets/{wallet}/withdrawals");
    for (body, field) in [
        (json!({"amount": 1, "external_ref": "x", "zz": 1}), "zz"),
        (json!({"external_ref": "x"}), "amount"),
        (json!({"amount": "ten", "external_ref": "x"}), "amount"),
        (json!({"amount": 1.5, "external_ref": "x"}), "amount"),
        (json!({"amount": 0, "external_ref": "x"}), "amount"),
        (json!({"amount": 1, "external_ref": 7}), "external_ref"),
    ] {
        let before = app.event_count().await;
        let a = app.post(&path, &token, body.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {:?}", a.body);
        assert_eq!(a.body["field"], field, "{body}: {:?}", a.body);
        assert_eq!(app.event_count().await, before);
    }
}

/// Tokens cannot borrow the subjects of Chronicle's own actors (devices, processes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserved_subjects_are_refused() {
    let app = TestApp::new().await;
    for sub in [
        "device:01a2017a-0fdf-7044-9b94-9390086d2029",
        "system:deadlines",
    ] {
        let token = app.token(sub, &[Role::Customer]);
        let a = app
            .post(
                "/v1/accounts",
                &token,
                json!({"email": "x@example.com", "display_name": "x"}),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{sub}: {:?}", a.body);
        assert_eq!(app.event_count().await, 0);
    }
}
