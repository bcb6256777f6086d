
// ---- Prelude: pure helpers shared by several kernel families (the host appends this file to
// each module that lists it in `shader!`; WGSL has no includes, and functions may be declared
// after their callers). WGSL has no overloading of user functions: each helper comes in an f32
// and a vec4<f32> form. ----

// σ(v) = 1 / (1 + e^−v).
fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

fn sigmoid4(v: vec4<f32>) -> vec4<f32> {
    return 1.0 / (1.0 + exp(-v));
}

// SiLU(v) = v·σ(v), written v / (1 + e^−v) as PyTorch computes it.
fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

fn silu4(v: vec4<f32>) -> vec4<f32> {
    return v / (1.0 + exp(-v));
}

// SiLU'(z) = σ(z)·(1 + z·(1 − σ(z))).
fn silu_derivative(z: f32) -> f32 {
    let s = sigmoid(z);
    return s * (1.0 + z * (1.0 - s));
}

fn silu_derivative4(z: vec4<f32>) -> vec4<f32> {
    let s = sigmoid4(z);
    return s * (1.0 + z * (1.0 - s));
}
