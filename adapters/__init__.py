"""Implementations of the engine's ports that import an SDK or run external code.

`engine/` is plain logic on plain data; everything here wraps a vendor:
faster-whisper/CTranslate2 (`whisper`), onnxruntime (`onnx`, `silero`,
`detectors`, Piper in `tts`), the espeak-ng binary (`tts`), google-genai
(`gemini`), pypdf (`resume`), Pillow's JPEG encoder (`evidence`) and glibc
(`malloc`). `server.py` and `media/service.py` pick and build them.
"""
