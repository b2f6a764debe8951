//! A client of the OCI distribution API (v2): pull an image into the store, push one from it.
//!
//! Pull: `GET /v2/<repo>/manifests/<tag|digest>` (accepting OCI and Docker manifests and
//! indexes) → for an index, the manifest for linux/\<host arch\> by digest → config and layers
//! `GET /v2/<repo>/blobs/<digest>`, each streamed into the store's staging area while hashed
//! and checked against its descriptor; the image is committed only when all of it is verified.
//! A manifest fetched by tag is checked against the `Docker-Content-Digest` the registry sends.
//!
//! Push: for each layer and the config, `HEAD /v2/<repo>/blobs/<digest>` and, if absent,
//! `POST /v2/<repo>/blobs/uploads/` then either one `PUT <location>?digest=…` with the whole
//! blob (blobs up to the chunk size) or `PATCH <location>` per chunk with `Content-Range` and a
//! final `PUT <location>?digest=…`; then `PUT /v2/<repo>/manifests/<tag>` with the manifest's
//! exact bytes and its media type as `Content-Type`.
//!
//! Authentication: a request answered `401` with `WWW-Authenticate: Bearer realm=…,service=…,
//! scope=…` gets a token from the realm (anonymously, or with the basic credentials if given)
//! and is retried once with it; `WWW-Authenticate: Basic` is answered with the credentials.
//! The realm must be https or the registry's own origin: credentials never go over plain http
//! to a host the registry named.
//!
//! Transport: plain HTTP to loopback registries (`localhost`, `127.0.0.0/8`, `::1`) or when
//! asked (`insecure`), HTTPS otherwise. The client is `reqwest` (hyper underneath, maintained,
//! async on tokio like the engine, streaming response bodies) without default features, with
//! rustls on the `ring` provider (no C toolchain for aws-lc) and the platform certificate
//! verifier (the system's CA store).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::digest::{Hasher, sha256_of, verify};
use super::error::{OciError, OciResult, json_err};
use super::layout::select_platform;
use super::media;
use super::reference::Reference;
use super::store::{CONFIG_LIMIT, ImageRecord, ImageStore, MANIFEST_LIMIT, Staging, make_record};

/// Blobs up to this size are uploaded in one PUT; larger ones in PATCH chunks of this size.
/// 16 MiB keeps memory bounded while making per-request overhead negligible.
pub const DEFAULT_CHUNK_SIZE: usize = 16 << 20;
const ERROR_BODY_LIMIT: usize = 512;

/// How to talk to a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Plain HTTP even to a registry that is not on loopback.
    pub insecure: bool,
    /// Basic credentials (for the registry or its token service).
    pub credentials: Option<(String, String)>,
    /// Upload chunk size; 0 means [`DEFAULT_CHUNK_SIZE`].
    pub chunk_size: usize,
}

impl RegistryOptions {
    /// Parses `user:password`.
    pub fn parse_credentials(s: &str) -> OciResult<(String, String)> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok((u.to_owned(), p.to_owned())),
            _ => Err(OciError::BadCredentials),
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushOutcome {
    pub reference: String,
    pub manifest_digest: String,
    pub blobs_uploaded: usize,
    pub blobs_existing: usize,
    pub bytes_uploaded: u64,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullOutcome {
    pub reference: String,
    pub image: ImageRecord,
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
}

#[derive(Debug, Clone)]
enum Auth {
    Basic(String, String),
    Bearer(String),
}

#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    base: String,
    repo: String,
    registry: String,
    creds: Option<(String, String)>,
    auth: Mutex<Option<Auth>>,
}

fn is_loopback(host: &str) -> bool {
    let h = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn http_client() -> OciResult<reqwest::Client> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let boxed = |e: Box<dyn std::error::Error + Send + Sync>| OciError::HttpClient { source: e };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| boxed(e.into()))?
        .with_platform_verifier()
        .map_err(|e| boxed(e.into()))?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .user_agent(concat!("cpengine/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| boxed(e.into()))
}

/// `key="value", key=value` pairs of an authentication challenge.
fn parse_challenge(s: &str) -> (String, BTreeMap<String, String>) {
    let s = s.trim();
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    (scheme.to_ascii_lowercase(), params)
}

fn status_err(method: &'static str, url: &str, status: StatusCode, body: &str) -> OciError {
    let mut body = body.trim().to_owned();
    if body.len() > ERROR_BODY_LIMIT {
        let mut cut = ERROR_BODY_LIMIT;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push('…');
    }
    OciError::RegistryStatus {
        method,
        url: url.to_owned(),
        status: status.as_u16(),
        body,
    }
}

async fn fail(method: &'static str, url: &str, resp: Response) -> OciError {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    status_err(method, url, status, &body)
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "request",
    }
}

impl Client {
    fn new(r: &Reference, opts: &RegistryOptions) -> OciResult<Self> {
        let host = r.registry_host();
        let scheme = if opts.insecure || is_loopback(host) {
            "http"
        } else {
            "https"
        };
        Ok(Self {
            http: http_client()?,
            base: format!("{scheme}://{host}"),
            repo: r.path().to_owned(),
            registry: host.to_owned(),
            creds: opts.credentials.clone(),
            auth: Mutex::new(None),
        })
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.repo)
    }

    /// An absolute URL for a `Location` header value.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            format!("{}/{location}", self.base)
        }
    }

    fn current_auth(&self) -> Option<Auth> {
        self.auth.lock().map(|a| a.clone()).unwrap_or(None)
    }

    fn apply(&self, rb: RequestBuilder, auth: Option<&Auth>) -> RequestBuilder {
        match auth {
            Some(Auth::Basic(u, p)) => rb.basic_auth(u, Some(p)),
            Some(Auth::Bearer(t)) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a request built by `make`, authenticating once if the registry asks to.
    async fn send(
        &self,
        method: Method,
        url: &str,
        make: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> OciResult<Response> {
        let name = method_name(&method);
        let http_err = |source| OciError::Http {
            method: name,
            url: url.to_owned(),
            source,
        };
        let auth = self.current_auth();
        let rb = make(self.http.request(method.clone(), url));
        let resp = self
            .apply(rb, auth.as_ref())
            .send()
            .await
            .map_err(http_err)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let Some(challenge) = challenge else {
            return Err(fail(name, url, resp).await);
        };
        let new_auth = self.authenticate(&challenge).await?;
        if let Ok(mut a) = self.auth.lock() {
            *a = Some(new_auth.clone());
        }
        let rb = make(self.http.request(method, url));
        let resp = self
            .apply(rb, Some(&new_auth))
            .send()
            .await
            .map_err(http_err)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(OciError::Unauthorized {
                registry: self.registry.clone(),
            });
        }
        Ok(resp)
    }

    /// Answers a `WWW-Authenticate` challenge.
    async fn authenticate(&self, challenge: &str) -> OciResult<Auth> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.as_str() {
            "basic" => match &self.creds {
                Some((u, p)) => Ok(Auth::Basic(u.clone(), p.clone())),
                None => Err(OciError::Unauthorized {
                    registry: self.registry.clone(),
                }),
            },
            "bearer" => {
                let realm =
                    params
                        .get("realm")
                        .cloned()
                        .ok_or_else(|| OciError::RegistryProtocol {
                            reason: format!("bearer challenge without realm: {challenge}"),
                        })?;
                self.token(&realm, &params)
                    .await
                    .map(Auth::Bearer)
                    .map_err(|e| OciError::Token {
                        realm,
                        source: Box::new(e),
                    })
            }
            other => Err(OciError::RegistryProtocol {
                reason: format!("unsupported authentication scheme {other:?}"),
            }),
        }
    }

    async fn token(&self, realm: &str, params: &BTreeMap<String, String>) -> OciResult<String> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(s) = params.get("service") {
            query.push(("service", s.clone()));
        }
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull,push", self.repo));
        query.push(("scope", scope));
        let mut url = reqwest::Url::parse(realm).map_err(|e| OciError::RegistryProtocol {
            reason: format!("token realm {realm:?}: {e}"),
        })?;
        // The realm is the registry's word: the credentials go to it only over https, or
        // to the registry's own origin (which the caller chose, plain http included).
        let same_origin = reqwest::Url::parse(&self.base)
            .is_ok_and(|b| b.origin() == url.origin() && b.scheme() == url.scheme());
        if url.scheme() != "https" && !same_origin {
            return Err(OciError::RegistryProtocol {
                reason: format!(
                    "token realm {realm:?} is neither https nor the registry's own origin"
                ),
            });
        }
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        let mut rb = self.http.get(url.clone());
        if let Some((u, p)) = &self.creds {
            rb = rb.basic_auth(u, Some(p));
        }
        let resp = rb.send().await.map_err(|source| OciError::Http {
            method: "GET",
            url: url.to_string(),
            source,
        })?;
        if !resp.status().is_success() {
            return Err(fail("GET", url.as_str(), resp).await);
        }
        let body = resp.bytes().await.map_err(|source| OciError::Http {
            method: "GET",
            url: url.to_string(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(json_err("token"))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| OciError::RegistryProtocol {
                reason: "token response without token".into(),
            })
    }

    /// Reads a whole (small) response body, refusing more than `limit` bytes.
    async fn body_limited(
        method: &'static str,
        url: &str,
        mut resp: Response,
        limit: u64,
        what: &'static str,
    ) -> OciResult<Vec<u8>> {
        if let Some(len) = resp.content_length()
            && len > limit
        {
            return Err(OciError::TooLarge {
                what,
                size: len,
                limit,
            });
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|source| OciError::Http {
            method,
            url: url.to_owned(),
            source,
        })? {
            out.extend_from_slice(&chunk);
            if out.len() as u64 > limit {
                return Err(OciError::TooLarge {
                    what,
                    size: out.len() as u64,
                    limit,
                });
            }
        }
        Ok(out)
    }

    /// GETs a manifest or index: (bytes, media type, digest).
    async fn get_manifest(&self, reference: &str) -> OciResult<(Vec<u8>, String, String)> {
        let url = self.url(&format!("manifests/{reference}"));
        let accept = [
            media::OCI_INDEX,
            media::OCI_MANIFEST,
            media::DOCKER_LIST,
            media::DOCKER_MANIFEST,
        ]
        .join(", ");
        let resp = self
            .send(Method::GET, &url, |rb| rb.header(ACCEPT, accept.clone()))
            .await?;
        if !resp.status().is_success() {
            return Err(fail("GET", &url, resp).await);
        }
        let header_digest = header_str(resp.headers(), "docker-content-digest");
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str())
            .map(|c| c.split(';').next().unwrap_or("").trim().to_owned());
        let body = Self::body_limited("GET", &url, resp, MANIFEST_LIMIT, "manifest").await?;
        let actual = sha256_of(&body);
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_owned())
        } else {
            header_digest
        };
        if let Some(e) = expected {
            verify(&e, body.len() as u64, &actual, body.len() as u64)?;
        }
        let media_type = match content_type {
            Some(c) if media::is_manifest(&c) || media::is_index(&c) => c,
            _ => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| media::OCI_MANIFEST.to_owned()),
        };
        Ok((body, media_type, actual))
    }

    /// Downloads a blob into a new staging file, checking digest and size; returns its path.
    async fn fetch_blob(&self, dest: PathBuf, digest: &str, size: u64) -> OciResult<PathBuf> {
        let url = self.url(&format!("blobs/{digest}"));
        let mut resp = self.send(Method::GET, &url, |rb| rb).await?;
        if !resp.status().is_success() {
            return Err(fail("GET", &url, resp).await);
        }
        let werr = |source| OciError::Write {
            path: dest.clone(),
            source,
        };
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
            .await
            .map_err(werr)?;
        let mut h = Hasher::default();
        while let Some(chunk) = resp.chunk().await.map_err(|source| OciError::Http {
            method: "GET",
            url: url.clone(),
            source,
        })? {
            h.update(&chunk);
            f.write_all(&chunk).await.map_err(werr)?;
            if h.len() > size {
                break;
            }
        }
        f.sync_all().await.map_err(werr)?;
        drop(f);
        let (actual, len) = h.finish();
        if let Err(e) = verify(digest, size, &actual, len) {
            let _ = tokio::fs::remove_file(&dest).await;
            return Err(e);
        }
        Ok(dest)
    }

    async fn blob_exists(&self, digest: &str) -> OciResult<bool> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self.send(Method::HEAD, &url, |rb| rb).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(fail("HEAD", &url, resp).await),
        }
    }

    fn location(&self, method: &'static str, url: &str, resp: &Response) -> OciResult<String> {
        resp.headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| self.absolute(l))
            .ok_or_else(|| OciError::RegistryProtocol {
                reason: format!("{method} {url} answered without a Location"),
            })
    }

    /// Uploads the store's blob `digest` of `size` bytes.
    async fn upload_blob(
        &self,
        path: PathBuf,
        digest: &str,
        size: u64,
        chunk: usize,
    ) -> OciResult<()> {
        let start_url = self.url("blobs/uploads/");
        let resp = self
            .send(Method::POST, &start_url, |rb| rb.header(CONTENT_LENGTH, 0))
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(fail("POST", &start_url, resp).await);
        }
        let mut location = self.location("POST", &start_url, &resp)?;
        let rerr = |source| OciError::Store {
            path: path.clone(),
            source,
        };
        let mut f = tokio::fs::File::open(&path).await.map_err(rerr)?;
        let with_digest = |loc: &str| {
            let sep = if loc.contains('?') { '&' } else { '?' };
            format!("{loc}{sep}digest={}", digest.replace(':', "%3A"))
        };
        if size as usize <= chunk {
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf).await.map_err(rerr)?;
            let body = Bytes::from(buf);
            let url = with_digest(&location);
            let resp = self
                .send(Method::PUT, &url, |rb| {
                    rb.header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, body.len())
                        .body(body.clone())
                })
                .await?;
            if resp.status() != StatusCode::CREATED {
                return Err(fail("PUT", &url, resp).await);
            }
            return Ok(());
        }
        let mut offset = 0u64;
        while offset < size {
            let n = chunk.min((size - offset) as usize);
            let mut buf = vec![0u8; n];
            f.read_exact(&mut buf).await.map_err(rerr)?;
            let body = Bytes::from(buf);
            let range = format!("{}-{}", offset, offset + n as u64 - 1);
            let url = location.clone();
            let resp = self
                .send(Method::PATCH, &url, |rb| {
                    rb.header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, body.len())
                        .header("Content-Range", range.clone())
                        .body(body.clone())
                })
                .await?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(fail("PATCH", &url, resp).await);
            }
            location = self.location("PATCH", &url, &resp)?;
            offset += n as u64;
        }
        let url = with_digest(&location);
        let resp = self
            .send(Method::PUT, &url, |rb| rb.header(CONTENT_LENGTH, 0))
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(fail("PUT", &url, resp).await);
        }
        Ok(())
    }

    async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        body: Bytes,
    ) -> OciResult<Option<String>> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self
            .send(Method::PUT, &url, |rb| {
                rb.header(CONTENT_TYPE, media_type)
                    .header(CONTENT_LENGTH, body.len())
                    .body(body.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(fail("PUT", &url, resp).await);
        }
        Ok(header_str(resp.headers(), "docker-content-digest"))
    }
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Pushes the local image `local` (a name or id in `store`) to `remote`
/// (`registry/repo[:tag]`).
pub async fn push(
    store: &ImageStore,
    local: &str,
    remote: &str,
    opts: &RegistryOptions,
) -> OciResult<PushOutcome> {
    let remote = Reference::parse(remote)?;
    let record = store.resolve(local).await?;
    let digest = record.manifest_digest.clone();
    let manifest_bytes = store
        .blocking(move |s| s.read_blob_limited(&digest, MANIFEST_LIMIT, "manifest"))
        .await?;
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(json_err(format!("manifest {}", record.manifest_digest)))?;
    let client = Client::new(&remote, opts)?;
    let chunk = if opts.chunk_size == 0 {
        DEFAULT_CHUNK_SIZE
    } else {
        opts.chunk_size
    };
    let mut out = PushOutcome {
        reference: remote.to_string(),
        manifest_digest: record.manifest_digest.clone(),
        blobs_uploaded: 0,
        blobs_existing: 0,
        bytes_uploaded: 0,
    };
    let mut blobs: Vec<(String, u64)> = manifest
        .layers()
        .iter()
        .map(|l| (l.digest().to_string(), l.size()))
        .collect();
    blobs.push((
        manifest.config().digest().to_string(),
        manifest.config().size(),
    ));
    for (digest, size) in blobs {
        if client.blob_exists(&digest).await? {
            out.blobs_existing += 1;
            continue;
        }
        let path = store.blob_path(&digest)?;
        client.upload_blob(path, &digest, size, chunk).await?;
        out.blobs_uploaded += 1;
        out.bytes_uploaded += size;
        tracing::debug!(%digest, size, "blob uploaded");
    }
    let echoed = client
        .put_manifest(
            remote.manifest_reference(),
            &record.manifest_media_type,
            Bytes::from(manifest_bytes),
        )
        .await?;
    if let Some(d) = echoed
        && d != record.manifest_digest
    {
        return Err(OciError::DigestMismatch {
            expected: record.manifest_digest,
            actual: d,
        });
    }
    Ok(out)
}

/// Pulls `reference` from its registry into `store`, named by the normalised reference.
pub async fn pull(
    reference: &str,
    store: &ImageStore,
    opts: &RegistryOptions,
) -> OciResult<PullOutcome> {
    let r = Reference::parse(reference)?;
    let client = Client::new(&r, opts)?;
    let (mut bytes, mut media_type, mut digest) =
        client.get_manifest(r.manifest_reference()).await?;
    let mut index_annotations = BTreeMap::new();
    let mut depth = 0;
    while media::is_index(&media_type) {
        depth += 1;
        if depth > super::layout::MAX_INDEX_DEPTH {
            return Err(OciError::IndexTooDeep {
                limit: super::layout::MAX_INDEX_DEPTH,
            });
        }
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(json_err(format!("index {digest}")))?;
        if let Some(a) = index.annotations() {
            index_annotations.extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let desc = select_platform(&index, &digest)?.clone();
        let want = desc.digest().to_string();
        let (b, m, d) = client.get_manifest(&want).await?;
        verify(&want, desc.size(), &d, b.len() as u64)?;
        (bytes, media_type, digest) = (b, m, d);
    }
    if !media::is_manifest(&media_type) {
        return Err(OciError::UnsupportedMediaType {
            what: "image",
            media_type,
        });
    }
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).map_err(json_err(format!("manifest {digest}")))?;
    let config_desc = manifest.config().clone();
    if config_desc.size() > CONFIG_LIMIT {
        return Err(OciError::TooLarge {
            what: "image config",
            size: config_desc.size(),
            limit: CONFIG_LIMIT,
        });
    }
    for l in manifest.layers() {
        media::layer_compression(l.media_type().as_ref())?;
    }

    let mut staging: Staging = store.blocking(|s| s.staging()).await?;
    let mut fetched: Vec<(PathBuf, String, u64)> = Vec::new();
    let (mut blobs_fetched, mut bytes_fetched) = (0, 0);
    let wanted: Vec<(String, u64)> =
        std::iter::once((config_desc.digest().to_string(), config_desc.size()))
            .chain(
                manifest
                    .layers()
                    .iter()
                    .map(|l| (l.digest().to_string(), l.size())),
            )
            .collect();
    // The sizes are the registry's word: what they add up to must fit in the store's free
    // space before anything is downloaded (each download is then held to its size).
    let declared = wanted
        .iter()
        .fold(0u64, |a, (_, size)| a.saturating_add(*size));
    let free = crate::host::fs::free_bytes(store.dir());
    if declared > free {
        return Err(OciError::TooLarge {
            what: "image blobs",
            size: declared,
            limit: free,
        });
    }
    for (d, size) in wanted {
        if store.blob_path(&d)?.exists() || fetched.iter().any(|(_, x, _)| *x == d) {
            continue;
        }
        let path = client.fetch_blob(staging.next_path(), &d, size).await?;
        blobs_fetched += 1;
        bytes_fetched += size;
        fetched.push((path, d, size));
    }
    let record_names = vec![r.to_string()];
    let m_len = bytes.len() as u64;
    let record = store
        .blocking(move |s| {
            for (path, d, size) in &fetched {
                staging.adopt(path, d, *size)?;
            }
            staging.put_bytes(&bytes, Some((&digest, m_len)))?;
            let config_bytes = match staging.get(config_desc.digest().as_ref()) {
                Some((p, _)) => std::fs::read(p).map_err(|e| OciError::Store {
                    path: p.to_path_buf(),
                    source: e,
                })?,
                None => s.read_blob_limited(
                    config_desc.digest().as_ref(),
                    CONFIG_LIMIT,
                    "image config",
                )?,
            };
            let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
                .map_err(json_err(format!("image config {}", config_desc.digest())))?;
            let record = make_record(
                record_names,
                &digest,
                &media_type,
                m_len,
                &manifest,
                &config,
                index_annotations,
            );
            let mut blobs = vec![digest.clone(), config_desc.digest().to_string()];
            blobs.extend(manifest.layers().iter().map(|l| l.digest().to_string()));
            s.commit(staging, &blobs, record)
        })
        .await?;
    Ok(PullOutcome {
        reference: r.to_string(),
        image: record,
        blobs_fetched,
        bytes_fetched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// A fake registry speaking just enough HTTP/1.1 to exercise token authentication and
    /// integrity checks (a real registry never serves corrupt blobs, so this edge needs a fake).
    /// Every response closes the connection.
    struct Fake {
        manifest: Vec<u8>,
        config: Vec<u8>,
        layer: Vec<u8>,
        corrupt_layer: bool,
    }

    async fn serve(
        fake: Arc<Fake>,
        listener: tokio::net::TcpListener,
        log: Arc<Mutex<Vec<String>>>,
    ) {
        let port = listener.local_addr().unwrap().port();
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (fake, log) = (fake.clone(), log.clone());
            tokio::spawn(async move {
                let mut r = tokio::io::BufReader::new(sock);
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or("").to_owned(),
                    parts.next().unwrap_or("").to_owned(),
                );
                let mut auth = String::new();
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).await.unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("authorization")
                    {
                        auth = v.trim().to_owned();
                    }
                }
                log.lock()
                    .unwrap()
                    .push(format!("{method} {path} [{auth}]"));
                let ok = |ctype: &str, body: &[u8], digest: Option<String>| {
                    let mut head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    if let Some(d) = digest {
                        head.push_str(&format!("Docker-Content-Digest: {d}\r\n"));
                    }
                    head.push_str("\r\n");
                    let mut out = head.into_bytes();
                    out.extend_from_slice(body);
                    out
                };
                let resp = if path.starts_with("/token?") {
                    // "u:p" in base64
                    if auth == "Basic dTpw" {
                        ok("application/json", br#"{"token":"tok123"}"#, None)
                    } else {
                        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                } else if auth != "Bearer tok123" {
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\",scope=\"repository:team/app:pull\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes()
                } else if path == "/v2/team/app/manifests/v1" {
                    ok(
                        media::OCI_MANIFEST,
                        &fake.manifest,
                        Some(sha256_of(&fake.manifest)),
                    )
                } else if path == format!("/v2/team/app/blobs/{}", sha256_of(&fake.config)) {
                    ok("application/octet-stream", &fake.config, None)
                } else if path == format!("/v2/team/app/blobs/{}", sha256_of(&fake.layer)) {
                    let mut body = fake.layer.clone();
                    if fake.corrupt_layer {
                        body[0] ^= 1;
                    }
                    ok("application/octet-stream", &body, None)
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec()
                };
                let mut sock = r.into_inner();
                let _ = sock.write_all(&resp).await;
                let _ = sock.shutdown().await;
            });
        }
    }

    async fn fake_registry(corrupt_layer: bool) -> (u16, Arc<Mutex<Vec<String>>>, Arc<Fake>) {
        fake_registry_declaring(corrupt_layer, None).await
    }

    /// A fake registry whose manifest may declare `layer_size` instead of the layer's size.
    async fn fake_registry_declaring(
        corrupt_layer: bool,
        layer_size: Option<u64>,
    ) -> (u16, Arc<Mutex<Vec<String>>>, Arc<Fake>) {
        let layer = b"not really a tar, the store does not look inside".to_vec();
        let config =
            serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_of(&layer)]}}))
            .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": sha256_of(&config), "size": config.len()},
            "layers": [{"mediaType": media::OCI_LAYER, "digest": sha256_of(&layer),
                        "size": layer_size.unwrap_or(layer.len() as u64)}],
            "annotations": {"k": "v"}}))
        .unwrap();
        let fake = Arc::new(Fake {
            manifest,
            config,
            layer,
            corrupt_layer,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(serve(fake.clone(), listener, log.clone()));
        (port, log, fake)
    }

    /// An empty image store in a temporary directory (removed when the guard drops).
    async fn fresh_store() -> (tempfile::TempDir, ImageStore) {
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path()).await.unwrap();
        (root, store)
    }

    /// Pulls `team/app:v1` from the fake registry at `host:port` into `store`, with the
    /// credentials its token service accepts.
    async fn pull_app(host: &str, port: u16, store: &ImageStore) -> OciResult<PullOutcome> {
        let opts = RegistryOptions {
            credentials: Some(("u".into(), "p".into())),
            ..Default::default()
        };
        pull(&format!("{host}:{port}/team/app:v1"), store, &opts).await
    }

    #[tokio::test]
    async fn pull_answers_a_bearer_challenge_with_a_token_from_the_realm() {
        let (port, log, fake) = fake_registry(false).await;
        let (_root, store) = fresh_store().await;
        let out = pull_app("127.0.0.1", port, &store).await.unwrap();
        assert_eq!(out.image.manifest_digest, sha256_of(&fake.manifest));
        assert_eq!(out.image.annotations["k"], "v");
        assert_eq!(out.blobs_fetched, 2);
        let log = log.lock().unwrap().clone();
        // 401 first, then the token request with basic credentials, then the retry.
        assert_eq!(log[0], "GET /v2/team/app/manifests/v1 []", "{log:?}");
        assert!(
            log[1].starts_with(
                "GET /token?service=fake&scope=repository%3Ateam%2Fapp%3Apull [Basic dTpw]"
            ),
            "{log:?}"
        );
        assert_eq!(
            log[2], "GET /v2/team/app/manifests/v1 [Bearer tok123]",
            "{log:?}"
        );
        // The token is reused for the blobs: no more challenges.
        assert!(
            log[3..].iter().all(|l| l.ends_with("[Bearer tok123]")),
            "{log:?}"
        );

        // Without the right credentials the token service refuses: a typed error.
        let (port, _, _) = fake_registry(false).await;
        let err = pull(
            &format!("127.0.0.1:{port}/team/app:v1"),
            &store,
            &RegistryOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, OciError::Token { .. }), "{err:?}");
    }

    /// A registry on plain http whose challenge names a token realm on another origin (here
    /// `127.0.0.1` for a registry addressed as `localhost`) over plain http: refused, and the
    /// credentials are never sent there.
    #[tokio::test]
    async fn a_plain_http_realm_on_another_host_gets_no_credentials() {
        let (port, log, _) = fake_registry(false).await;
        let (_root, store) = fresh_store().await;
        let err = pull_app("localhost", port, &store).await.unwrap_err();
        assert!(
            matches!(&err, OciError::Token { source, .. }
                if matches!(**source, OciError::RegistryProtocol { .. })),
            "{err:?}"
        );
        let log = log.lock().unwrap().clone();
        assert!(!log.iter().any(|l| l.contains("/token")), "{log:?}");
    }

    /// A manifest declaring a layer larger than the store's free space is refused before any
    /// blob is downloaded (the download would otherwise run until the declared size).
    #[tokio::test]
    async fn a_declared_blob_size_beyond_the_free_space_is_refused_before_download() {
        let (port, log, _) = fake_registry_declaring(false, Some(1 << 60)).await;
        let (_root, store) = fresh_store().await;
        let err = pull_app("127.0.0.1", port, &store).await.unwrap_err();
        assert!(
            matches!(err, OciError::TooLarge { what: "image blobs", size, .. } if size >= 1 << 60),
            "{err:?}"
        );
        let log = log.lock().unwrap().clone();
        assert!(!log.iter().any(|l| l.contains("/blobs/")), "{log:?}");
    }

    #[tokio::test]
    async fn a_corrupt_blob_from_a_registry_is_refused_and_nothing_is_committed() {
        let (port, _, fake) = fake_registry(true).await;
        let (_root, store) = fresh_store().await;
        let err = pull_app("127.0.0.1", port, &store).await.unwrap_err();
        assert!(
            matches!(&err, OciError::DigestMismatch { expected, .. } if *expected == sha256_of(&fake.layer)),
            "{err:?}"
        );
        assert!(store.list().await.unwrap().is_empty());
        let blobs = std::fs::read_dir(store.dir().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(blobs, 0);
        assert_eq!(
            std::fs::read_dir(store.dir().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("basic", "Registry Realm")
        );
    }

    #[test]
    fn loopback_detection() {
        for h in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["registry-1.docker.io", "10.0.0.1:5000", "quay.io"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn credentials_parse() {
        assert_eq!(
            RegistryOptions::parse_credentials("u:p:q").unwrap(),
            ("u".into(), "p:q".into())
        );
        assert!(RegistryOptions::parse_credentials("nopass").is_err());
        assert!(RegistryOptions::parse_credentials(":p").is_err());
    }
}
