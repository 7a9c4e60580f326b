"""What ppgguf knows of GGUF files and llama.cpp, below every pipeline stage (no torch at import).

Modules, in the order a file is read and run:

    keys            every `ppgguf.*` metadata key and the value type each key is written with
    sampling        the sampling defaults a built file carries (`general.sampling.*`)
    tokenizer_spec  TokenizerSpec: the `tokenizer.*` metadata, as written into a GGUF
    reader          the one GGUF metadata reader: key-value fields and the tensor table, no tensor data
    quant_types     llama.cpp's quant types, the embedding types, and the checks on a requested type
    runtime         llama-cpp-python: quiet loading, captured logs, logits of a token sequence
    decode          the one greedy decoder
"""
