//! A self-contained HTML page as the tests read it: every image embedded, nothing loaded —
//! parsed, and rendered alone in headless Chromium.

use regex::Regex;
use std::path::Path;
use std::process::Command;

/// RFC 4648 base64, decoded independently of the library's encoder.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("{:?} is not base64", c as char),
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (value(c) as u32) << (18 - 6 * i));
        out.extend(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Every `<img>` of the page is a PNG `data:` URI that decodes to an image; nothing on the page
/// loads from elsewhere. Returns how many images it holds.
pub fn check_images(html: &str) -> usize {
    let tag = Regex::new(r"<img\b[^>]*>").unwrap();
    let src = Regex::new(r"\bsrc='([^']*)'").unwrap();
    let mut count = 0;
    for img in tag.find_iter(html) {
        let source = &src.captures(img.as_str()).expect("an img with a src")[1];
        let data = source
            .strip_prefix("data:image/png;base64,")
            .unwrap_or_else(|| panic!("not an embedded PNG: {}", &source[..source.len().min(80)]));
        let png = base64_decode(data);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        let image = image::load_from_memory_with_format(&png, image::ImageFormat::Png)
            .expect("a PNG that decodes");
        assert!(image.width() > 0 && image.height() > 0);
        count += 1;
    }
    for outside in [
        "<script", "<link", "<iframe", "url(http", "src=\"", "@import",
    ] {
        assert!(!html.contains(outside), "the page loads nothing: {outside}");
    }
    assert!(count > 0, "the page shows images");
    count
}

/// Renders the page copied alone into an empty folder in headless Chromium, with a script that
/// counts the images the browser decoded; every one must have. Skipped (saying so) only where
/// Chromium is not installed and `WGSL_DIFF_REQUIRE_CHROMIUM` is unset; CI sets it.
pub fn chromium_loads_every_image(page_file: &Path, images: usize, sections: &[&str]) {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(browser) = browser else {
        assert!(
            std::env::var_os("WGSL_DIFF_REQUIRE_CHROMIUM").is_none(),
            "WGSL_DIFF_REQUIRE_CHROMIUM is set but no chromium is installed"
        );
        eprintln!(
            "SKIPPED the Chromium rendering check: no chromium here (apt-get install chromium)"
        );
        return;
    };
    // An empty folder of its own: nothing beside the page that it could load.
    let alone = std::env::temp_dir().join(format!(
        "wgsl-diff-chromium-{}-{}",
        std::process::id(),
        page_file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&alone);
    std::fs::create_dir_all(&alone).unwrap();
    let page = alone.join("page.html");
    let probe = "<script>window.addEventListener('load',()=>{const i=[...document.images];\
                 document.body.setAttribute('data-images',i.filter(x=>x.complete&&\
                 x.naturalWidth>0).length+'/'+i.length);});</script>";
    let html = std::fs::read_to_string(page_file).unwrap();
    std::fs::write(&page, html.replace("</body>", &format!("{probe}</body>"))).unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!("data-images=\"{images}/{images}\"");
    assert!(
        dom.contains(&want),
        "Chromium decoded fewer images than the page holds ({want}): {}",
        Regex::new(r#"data-images="[^"]*""#)
            .unwrap()
            .find(&dom)
            .map_or("no count", |m| m.as_str())
    );
    for id in sections {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "rendered page lacks #{id}"
        );
    }
}
