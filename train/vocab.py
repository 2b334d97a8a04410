"""Word vocabulary and the prefix tries that constrain decoding.

Token ids: 0 PAD, 1 BOS, 2 SEP (ends a theme), 3 EOS (ends a keyword), 4 UNK, then the words of all
theme and keyword phrases in sorted order. A decoded sequence is

    BOS theme-words SEP keyword-words EOS

Stage 1 decodes under the theme trie (phrases terminated by SEP), stage 2 under the keyword trie
(phrases terminated by EOS). A trie is stored the way the engine uses it (CSR):

    indptr[n_nodes + 1]   children of node s are entries indptr[s] .. indptr[s+1]-1
    token[E], child[E]    entries sorted by token id within a node
    phrase[n_nodes]       the phrase id a node completes (reached through the terminator), else -1

Node 0 is the root. Node ids are assigned breadth first, children in token order, so building the
trie is deterministic and the C engine can rebuild the identical arrays from the phrase tables.
"""
import re

PAD, BOS, SEP, EOS, UNK = 0, 1, 2, 3, 4
SPECIALS = ("<pad>", "<bos>", "<sep>", "<eos>", "<unk>")

# What queries and phrases are split into words on: the characters Python's str.isspace() is
# true for (those str.split() splits on), written out so that the definition does not move with
# the Python version and the C engine (engine/text.c vt_is_space) lists exactly the same ones.
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" +
              "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000")
_SPLIT = re.compile("[%s]+" % re.escape(WHITESPACE))
# Only A-Z are lowercased (str.lower() would also map other scripts, which the C engine does not)
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def split(text):
    """text's words: split at runs of WHITESPACE, empty words dropped."""
    return [w for w in _SPLIT.split(text) if w]


def words(text):
    """The words a query is looked up by: split(), with A-Z lowercased."""
    return split(text.translate(_LOWER))


class Vocab:
    def __init__(self, tokens):
        self.itos = list(SPECIALS) + list(tokens)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary has duplicate entries")

    @classmethod
    def from_phrases(cls, phrases):
        return cls(sorted({w for p in phrases for w in split(p)}))

    def __len__(self):
        return len(self.itos)

    def encode(self, text):
        return [self.stoi.get(w, UNK) for w in words(text)]

    def decode(self, ids):
        return " ".join(self.itos[i] for i in ids if i >= len(SPECIALS))


class Trie:
    def __init__(self, sequences, terminator):
        """sequences[i] is phrase i's token ids (without terminator)."""
        root = {}
        for pid, seq in enumerate(sequences):
            node = root
            for t in seq:
                node = node.setdefault(t, {})
            if terminator in node:
                raise ValueError("duplicate phrase %d" % pid)
            node[terminator] = pid
        self.terminator = terminator
        indptr, token, child, phrase = [0], [], [], [-1]
        queue = [root]
        head = 0
        while head < len(queue):
            node = queue[head]
            head += 1
            for t in sorted(node):
                token.append(t)
                if t == terminator:
                    child.append(len(phrase))
                    phrase.append(node[t])
                    queue.append({})
                else:
                    child.append(len(phrase))
                    phrase.append(-1)
                    queue.append(node[t])
            indptr.append(len(token))
        self.indptr, self.token, self.child, self.phrase = indptr, token, child, phrase
        self.n_phrases = len(sequences)

    def children(self, node):
        a, b = self.indptr[node], self.indptr[node + 1]
        return self.token[a:b], self.child[a:b]

    def walk(self, seq, node=0):
        """Node reached from `node` by tokens seq, or -1 if it leaves the trie."""
        for t in seq:
            toks, kids = self.children(node)
            try:
                node = kids[toks.index(t)]
            except ValueError:
                return -1
        return node

    def contains(self, seq):
        """Phrase id of seq (terminator included), or -1."""
        n = self.walk(seq)
        return self.phrase[n] if n >= 0 else -1
