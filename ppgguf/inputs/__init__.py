"""What a build reads: the character and the base model, before any model runs.

Modules, in the order data flows:

    card_png    the card JSON inside a PNG's text chunks
    cards       Character Card JSON (V1, V2, V3): fields checked, macros expanded
    persona     Persona from a text file or a card; its system prompt
    families    the model families ppgguf converts (llama, qwen2, qwen3) and their GGUF architectures
    tokenizer   ChatTokenizer (llama.cpp's tokenization and the chat template); a Hugging Face tokenizer as GGUF metadata
    base        the dense base model: a GGUF or a checkpoint directory, loaded into PyTorch
    shapes      ModelShape: a base model's sizes read from its headers, no weights loaded
"""
