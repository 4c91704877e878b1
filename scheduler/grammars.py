"""Structured output compiled into grammars, once per constraint, and kept for later requests.

A request's StructuredOutput (contract/structured.py) becomes an llguidance grammar over the
model's vocabulary: a JSON schema through llguidance's JSON compiler, a regex or a choice as a
Lark grammar, a GBNF (llama.cpp) grammar converted to Lark. Compiling builds a matcher and
computes its first mask, so the lexer's first states exist before any step needs them; each
request then takes a cheap copy of that matcher (`CompiledGrammar.new_matcher`) and advances
its own copy token by token (scheduler/token_masks.py).

`compile` runs on the caller's thread: the servers call it on a thread of their own before
they queue a request (frontend/admission.py), so a big schema stalls neither the engine loop
nor the event loop; the engine's own call then finds it cached. Refusals are
InvalidFieldError naming the constraint and what is wrong, or the limit it is over
(SchedulerConfig: max_structured_bytes, max_grammar_symbols, grammar_compile_fuel).

JSON comes out in the layout `json.dumps` writes, `{"a": 1, "b": [2, 3]}`: the separators
", " and ": " and no other whitespace, so a sampled output cannot wander off into blank
space (a schema's own "x-guidance" options may say otherwise).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from common.checks import InvalidFieldError
from contract.structured import StructuredOutput
from modelfiles.tokenizer import Tokenizer
from scheduler.config import SchedulerConfig
from scheduler.grammar_tokenizer import grammar_tokenizer

JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MAX_ERROR_CHARS = 600
# llguidance's words for a limit -> the setting that sets it.
_LIMIT_SETTINGS = {
    "grammar size": "max_grammar_symbols",
    "initial lexer": "grammar_compile_fuel",
}


@dataclass(slots=True, frozen=True)
class CompiledGrammar:
    """One constraint compiled for the model's vocabulary."""

    template: Any  # llguidance.LLMatcher at the start of the output, first mask computed
    words_per_row: int  # 32-bit words of one mask row: ceil(vocabulary / 32)
    compile_seconds: float

    def new_matcher(self) -> Any:
        """A matcher of its own for one sequence, at the start of the output."""
        return self.template.deep_copy()


class GrammarCompiler:
    """Compiles and caches grammars for one model; thread-safe."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int,
        eos_ids: tuple[int, ...],
        config: SchedulerConfig,
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self.max_bytes = config.max_structured_bytes
        self.max_symbols = config.max_grammar_symbols
        self.compile_fuel = config.grammar_compile_fuel
        self.cache_size = config.grammar_cache_size
        self._cache: OrderedDict[tuple, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self._llg_tokenizer: Any = None  # built on first use: about a second for 50k tokens
        self.num_compiled = 0

    def compile(self, structured: StructuredOutput) -> CompiledGrammar:
        """The compiled grammar, from the cache when an equal constraint was compiled before;
        InvalidFieldError naming what is wrong."""
        name = f"structured.{structured.kind}"
        if structured.size > self.max_bytes:
            raise InvalidFieldError(
                name,
                f"{name} is {structured.size} bytes, over the server's limit "
                f"(max_structured_bytes: {self.max_bytes})",
            )
        with self._lock:
            found = self._cache.get(structured.key)
            if found is not None:
                self._cache.move_to_end(structured.key)
                return found
        compiled = self._compile(structured, name)
        with self._lock:
            self._cache[structured.key] = compiled
            self._cache.move_to_end(structured.key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            self.num_compiled += 1
        return compiled

    def _compile(self, structured: StructuredOutput, name: str) -> CompiledGrammar:
        import llguidance

        grammar = grammar_text(structured, name)
        tokenizer = self.llg_tokenizer()
        limits = llguidance.LLParserLimits(
            max_grammar_size=self.max_symbols,
            initial_lexer_fuel=self.compile_fuel,
            verbose_errors=False,  # no parser state (the caller's text) in messages and logs
        )
        start = time.perf_counter()
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=limits)
        if not matcher.is_error():
            matcher.compute_bitmask()  # builds the first lexer states here, off the step loop
        if matcher.is_error():
            raise InvalidFieldError(name, self._describe(name, matcher.get_error()))
        return CompiledGrammar(
            template=matcher,
            words_per_row=(tokenizer.vocab_size + 31) // 32,
            compile_seconds=time.perf_counter() - start,
        )

    def _describe(self, name: str, error: str) -> str:
        error = error.strip()[:MAX_ERROR_CHARS]
        limits = {
            "max_grammar_symbols": self.max_symbols,
            "grammar_compile_fuel": self.compile_fuel,
        }
        for words, setting in _LIMIT_SETTINGS.items():
            if error.startswith(words) and "too big" in error:
                return (
                    f"{name} is too complex to compile: {error} (the server's {setting}: "
                    f"{limits[setting]})"
                )
        return f"{name} is not valid: {error}"

    def llg_tokenizer(self) -> Any:
        """The vocabulary as llguidance reads it (built on first use)."""
        with self._lock:
            if self._llg_tokenizer is None:
                self._llg_tokenizer = grammar_tokenizer(
                    self.tokenizer, self.vocab_size, self.eos_ids
                )
            return self._llg_tokenizer


def grammar_text(structured: StructuredOutput, name: str) -> str:
    """llguidance's grammar for a constraint; InvalidFieldError for one that cannot be read."""
    import llguidance

    kind, spec = structured.kind, structured.spec
    try:
        if kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema(
                {"type": "object"}, defaults=JSON_LAYOUT
            )
        if kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(spec, defaults=JSON_LAYOUT)
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(spec)
        if kind == "choice":
            return llguidance.LLMatcher.grammar_from_lark(
                "start: " + " | ".join(json.dumps(c) for c in structured.choices)
            )
        return llguidance.grammar_from("grammar", spec)  # GBNF, or Lark as it is
    except ValueError as exc:
        message = str(exc).removeprefix("Failed to convert the grammar from GBNF to Lark: ")
        raise InvalidFieldError(name, f"{name} is not valid: {message[:MAX_ERROR_CHARS]}") from None
