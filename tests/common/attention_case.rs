//! One attention case, its f64 references computed once, checked on any device: the output, and
//! optionally the saved log-sum-exp and the input gradients.

use super::reference as r;
use super::{assert_close, attention_path, read_from, to_f64, upload_to, Rng};
use wgsl_diff::gpu::Gpu;
use wgsl_diff::ops::{self, AttentionSaved};

/// (batch, tokens, channels, heads).
pub type AttentionShape = (usize, usize, usize, usize);

pub struct AttentionCase {
    shape: AttentionShape,
    scale: f32,
    inputs: [Vec<f32>; 4],
    want_out: Vec<f64>,
    /// The log-sum-exp and (dq, dk, dv) for d_out, when the gradient is checked.
    want_grad: Option<(Vec<f64>, [Vec<f64>; 3])>,
}

impl AttentionCase {
    pub fn new(rng: &mut Rng, shape: AttentionShape, grad: bool) -> AttentionCase {
        let (b, n, c, heads) = shape;
        let len = b * n * c;
        let inputs = [rng.vec(len), rng.vec(len), rng.vec(len), rng.vec(len)];
        let scale = 1.0 / ((c / heads) as f32).sqrt();
        let [q, k, v, d_out] = inputs.each_ref().map(|x| to_f64(x));
        let want_out = r::attention(&q, &k, &v, b, n, c, heads, scale as f64);
        let want_grad = grad.then(|| {
            let lse = r::attention_lse(&q, &k, (b, n, c), heads, scale as f64);
            let (dq, dk, dv) =
                r::attention_grad(&q, &k, &v, (b, n, c), heads, scale as f64, &d_out);
            (lse, [dq, dk, dv])
        });
        AttentionCase {
            shape,
            scale,
            inputs,
            want_out,
            want_grad,
        }
    }

    /// ops::attention on `g`, and with the gradient: attention_saving (the same output, the
    /// log-sum-exp) and attention_grad, each against the references.
    pub fn check(&self, g: &Gpu) {
        let (b, n, c, heads) = self.shape;
        let what = |t: &str| format!("attention {t} {} {:?}", attention_path(g), self.shape);
        let [q, k, v, d_out] = self.inputs.each_ref().map(|x| upload_to(g, x, &[b, n, c]));
        let plain = ops::attention(g, &q, &k, &v, heads, self.scale).unwrap();
        assert_close(
            &what("output"),
            &read_from(g, &plain),
            &self.want_out,
            1e-5,
            1e-4,
        );
        let Some((want_lse, [wq, wk, wv])) = &self.want_grad else {
            return;
        };
        let (out, lse) = ops::attention_saving(g, &q, &k, &v, heads, self.scale).unwrap();
        let same = read_from(g, &out) == read_from(g, &plain);
        assert!(same, "{}", what("saving output = plain output"));
        assert_close(&what("lse"), &read_from(g, &lse), want_lse, 1e-5, 1e-5);
        let saved = AttentionSaved {
            q: &q,
            k: &k,
            v: &v,
            out: &out,
            lse: &lse,
        };
        let (dq, dk, dv) = ops::attention_grad(g, saved, &d_out, heads, self.scale).unwrap();
        assert_close(&what("dq"), &read_from(g, &dq), wq, 1e-5, 1e-4);
        assert_close(&what("dk"), &read_from(g, &dk), wk, 1e-5, 1e-4);
        assert_close(&what("dv"), &read_from(g, &dv), wv, 1e-5, 1e-4);
    }
}
