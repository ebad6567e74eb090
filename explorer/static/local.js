// In-page decoding: ONNX Runtime Web (WebAssembly, one thread) runs the export's fp32 ONNX decoder, fetched once
// per space from the explorer (api/spaces/<space>/decoder.onnx) and used only if its SHA-256 is the manifest's.
// Images are made as the server makes them (handlers/service.py, runtime/images.py): sigmoid of the logits,
// clipped to [0, 1], times 255, rounded half to even.
"use strict";

const inPage = (() => {
  const ORT = "vendor/ort/ort.wasm.bundle.min.mjs";   // served by the explorer from node_modules (make setup)
  const WASM = "vendor/ort/ort-wasm-simd-threaded.wasm";
  const decoders = {};  // space name -> promise of a decoder
  let runtime = null;   // promise of the ort module

  const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");

  function loadRuntime() {
    if (typeof WebAssembly !== "object") {
      return Promise.reject(new Error("WebAssembly is not available in this browser"));
    }
    runtime = runtime || import(new URL(ORT, document.baseURI).href).then((ort) => {
      ort.env.wasm.numThreads = 1;  // threads need a cross-origin isolated page; one is enough for one latent
      ort.env.wasm.proxy = false;
      ort.env.wasm.wasmPaths = { wasm: new URL(WASM, document.baseURI).href };
      return ort;
    }, (e) => { throw new Error(`ONNX Runtime Web did not load (${e.message || e})`); });
    return runtime;
  }

  async function fetchChecked(name, expected) {
    const response = await fetch(`api/spaces/${encodeURIComponent(name)}/decoder.onnx`);
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(`decoder.onnx: HTTP ${response.status} ${body.message || ""}`.trim());
    }
    const bytes = await response.arrayBuffer();
    if (!crypto.subtle) throw new Error("this page cannot hash (no SubtleCrypto): the decoder stays unchecked");
    const sha256 = hex(await crypto.subtle.digest("SHA-256", bytes));
    if (sha256 !== expected) {
      throw new Error(`decoder.onnx: sha256 ${sha256.slice(0, 12)}... is not the manifest's ${expected.slice(0, 12)}...`);
    }
    return new Uint8Array(bytes);
  }

  async function create(name, space) {
    if (!space.decoder) throw new Error("the served archives hold no fp32 ONNX decoder for this space");
    const [ort, bytes] = await Promise.all([loadRuntime(), fetchChecked(name, space.decoder.sha256)]);
    let session;
    try {
      session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    } catch (e) {
      throw new Error(`the decoder did not load in ONNX Runtime Web (${e.message || e})`);
    }
    const input = new ort.Tensor("float32", new Float32Array(space.latent_dim), [1, space.latent_dim]);
    return { ort, session, input, inputName: session.inputNames[0], outputName: session.outputNames[0] };
  }

  // The decoder of space ``name`` (its document from api/spaces), loaded once; rejects with a message for the page.
  function load(name, space) {
    decoders[name] = decoders[name] || create(name, space);
    return decoders[name];
  }

  // The latent ``z`` decoded: 8-bit pixels (rows of the image), as the served PNG holds them.
  async function decode(decoder, z) {
    decoder.input.data.set(z);
    const out = await decoder.session.run({ [decoder.inputName]: decoder.input });
    const logits = out[decoder.outputName];
    const [height, width] = logits.dims.slice(2);
    const pixels = new Uint8ClampedArray(logits.data.length);
    logits.data.forEach((x, i) => {
      const v = Math.min(1, Math.max(0, 1 / (1 + Math.exp(-x)))) * 255;
      const r = Math.round(v);
      pixels[i] = r - v === 0.5 && r % 2 === 1 ? r - 1 : r;  // numpy's round: half to even
    });
    return { pixels, width, height };
  }

  return { load, decode };
})();
