"""Using a built file: chat with it, inspect it, measure it against its dense twin.

Modules:

    chat        ChatSession: a conversation with a built GGUF, usable from Python
    repl        the terminal front end of `ppgguf chat`
    inspect     `ppgguf inspect`: what a GGUF says about itself
    evaluate    `ppgguf eval`: did the character survive (KL, attribution, general knowledge)
    bench       `ppgguf bench`: is it faster (speed, memory, size)
    render      the Rich tables of eval and bench
"""
