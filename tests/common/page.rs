//! A self-contained HTML page as the tests read it: every image embedded, nothing loaded.

use regex::Regex;

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
