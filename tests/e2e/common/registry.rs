//! A minimal Docker registry (the distribution API's GET/HEAD of `/v2/`, manifests and
//! blobs) serving one image on 127.0.0.1, so the real daemon can pull with no network.
//! Docker talks plain HTTP to registries on loopback addresses.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

pub struct Registry {
    pub address: String,
    /// Set once a stalled layer's first half went out: the daemon is mid-download.
    half_served: Arc<AtomicBool>,
}

fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A one-layer image: `files` are (path, mode, contents) in a gzip-compressed layer.
pub struct Image {
    pub repository: String,
    pub tag: String,
    pub files: Vec<(String, u32, Vec<u8>)>,
    /// Serve a layer whose bytes do not match its digest: the pull fails mid-stream.
    pub corrupt_layer: bool,
    /// Send half the layer, then nothing for minutes: the pull hangs mid-download.
    pub stall_layer: bool,
}

impl Registry {
    /// Starts serving `image` on a free loopback port, until the test process exits.
    pub fn serve(image: Image) -> Registry {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, mode, contents) in &image.files {
            let mut header = tar::Header::new_gnu();
            header.set_mode(*mode);
            header.set_size(contents.len() as u64);
            header.set_mtime(1_600_000_000);
            header.set_cksum();
            tar.append_data(&mut header, path, &contents[..]).unwrap();
        }
        let layer_tar = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&layer_tar).unwrap();
        let layer = gz.finish().unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [digest(&layer_tar)]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": config.len(),
                "digest": digest(&config),
            },
            "layers": [{
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": layer.len(),
                "digest": digest(&layer),
            }],
        }))
        .unwrap();

        let mut routes: HashMap<String, (String, Vec<u8>)> = HashMap::new();
        let base = format!("/v2/{}", image.repository);
        let manifest_type = "application/vnd.docker.distribution.manifest.v2+json".to_string();
        routes.insert(
            format!("{base}/manifests/{}", image.tag),
            (manifest_type.clone(), manifest.clone()),
        );
        routes.insert(
            format!("{base}/manifests/{}", digest(&manifest)),
            (manifest_type, manifest),
        );
        routes.insert(
            format!("{base}/blobs/{}", digest(&config)),
            ("application/octet-stream".into(), config),
        );
        let served_layer = if image.corrupt_layer {
            let mut bad = layer.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0xff;
            bad
        } else {
            layer.clone()
        };
        routes.insert(
            format!("{base}/blobs/{}", digest(&layer)),
            ("application/octet-stream".into(), served_layer),
        );
        let stalled = image
            .stall_layer
            .then(|| format!("{base}/blobs/{}", digest(&layer)));
        let routes = Arc::new(routes);

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let half_served = Arc::new(AtomicBool::new(false));
        let served = Arc::clone(&half_served);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let routes = Arc::clone(&routes);
                let stalled = stalled.clone();
                let served = Arc::clone(&served);
                std::thread::spawn(move || {
                    let _ = handle(stream, &routes, stalled.as_deref(), &served);
                });
            }
        });
        Registry {
            address,
            half_served,
        }
    }

    /// Whether a stalled layer's first half has been sent.
    pub fn half_served(&self) -> bool {
        self.half_served.load(Ordering::SeqCst)
    }
}

fn handle(
    mut stream: TcpStream,
    routes: &HashMap<String, (String, Vec<u8>)>,
    stalled: Option<&str>,
    half_served: &AtomicBool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let mut words = request_line.split_whitespace();
    let (Some(method), Some(path)) = (words.next(), words.next()) else {
        return Ok(()); // not HTTP (a TLS hello): close, and the daemon falls back to HTTP
    };
    let (status, content_type, body): (&str, &str, &[u8]) = match routes.get(path) {
        _ if path == "/v2/" => ("200 OK", "application/json", b"{}"),
        Some((content_type, body)) => ("200 OK", content_type, body),
        None => (
            "404 Not Found",
            "application/json",
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#,
        ),
    };
    let digest_header = if path.contains("/manifests/") && status.starts_with("200") {
        format!("Docker-Content-Digest: {}\r\n", digest(body))
    } else {
        String::new()
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{digest_header}\
         Docker-Distribution-Api-Version: registry/2.0\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" && stalled == Some(path) {
        stream.write_all(&body[..body.len() / 2])?;
        stream.flush()?;
        half_served.store(true, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_secs(300));
    }
    if method != "HEAD" {
        stream.write_all(body)?;
    }
    stream.flush()
}
