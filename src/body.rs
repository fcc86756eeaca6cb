//! HTTP response bodies, read with a cap: a hostile or broken server cannot exhaust memory.

/// At most `cap` bytes of a body (the rest is not read).
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(crate::errors::reqwest_chain)? {
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    Ok(out)
}

/// [`read_capped`] as text (invalid UTF-8 replaced).
pub async fn read_capped_text(resp: reqwest::Response, cap: usize) -> Result<String, String> {
    let bytes = read_capped(resp, cap).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
