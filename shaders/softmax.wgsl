// Row softmax of scores with an optional causal mask: the middle of attention run as two matrix
// products (query length ≠ key length: cross-attention; or a causal mask: CLIP's text encoder).
// Each invocation turns one row of S (rows, cols) into softmax(S·scale) and writes its lse.
// Row r is query r % queries of its (item, head); with CAUSAL, query i sees keys j ≤ i (queries
// = cols), the others get probability 0. Three passes over the row: the host keeps 3·cols
// under the loop budget.

struct Params {
    rows: u32,     // (item, head) pairs · queries
    cols: u32,     // keys
    queries: u32,  // queries per (item, head)
    scale: f32,
}

override CAUSAL: bool = false;

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> probs: array<f32>;
@group(0) @binding(3) var<storage, read_write> row_lse: array<f32>;

@compute @workgroup_size(WG)
fn softmax_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    // Keys this row sees: all, or with CAUSAL the first (query + 1).
    var seen = p.cols;
    if CAUSAL {
        seen = row % p.queries + 1u;
    }
    var m = -3.4e38;
    for (var j = 0u; j < seen; j++) {
        m = max(m, scores[base + j] * p.scale);
    }
    var sum = 0.0;
    for (var j = 0u; j < seen; j++) {
        sum += exp(scores[base + j] * p.scale - m);
    }
    let inv = 1.0 / sum;
    for (var j = 0u; j < p.cols; j++) {
        var prob = 0.0;
        if j < seen {
            prob = exp(scores[base + j] * p.scale - m) * inv;
        }
        probs[base + j] = prob;
    }
    row_lse[row] = m + log(sum);
}

// softmax_rows_grad: the row softmax's backward, one invocation per row. From the forward's
// probabilities P and dP = ∂L/∂P it writes the gradient with respect to the unscaled scores,
//   dS_ij = scale · P_ij · (dP_ij − Σ_k P_ik·dP_ik);
// masked keys have P = 0 and get 0. Two passes over the row (within the forward's budget).
@group(0) @binding(1) var<storage, read> grad_probs: array<f32>;
@group(0) @binding(2) var<storage, read> grad_dprobs: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad_dscores: array<f32>;

@compute @workgroup_size(WG)
fn softmax_rows_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var dot = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        dot += grad_probs[base + j] * grad_dprobs[base + j];
    }
    for (var j = 0u; j < p.cols; j++) {
        grad_dscores[base + j] = p.scale * grad_probs[base + j] * (grad_dprobs[base + j] - dot);
    }
}
