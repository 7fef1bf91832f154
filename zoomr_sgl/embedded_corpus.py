"""The embedded bigram model's training text: reasoning-like English word problems generated from a seed.

Contract:
- ``corpus(n_docs, seed) -> list[str]``: ``n_docs`` documents, the same for the same arguments (one
  ``random.Random(seed)``, nothing else read). A document is a word problem (items, travel, price, work, sharing,
  ages), its reasoning as paragraphs inside ``<think>...</think>`` (in 70% of documents some paragraphs followed by a
  ``<summary>...</summary>`` of their last line, and always a closing summary of the whole), and a final answer
  sentence; 40% in the chat format (``<|im_start|>user ... <|im_end|>``, sometimes a system turn), the rest plain and
  ending ``<|endoftext|>``.
- ``zoomr_sgl.embedded_model`` trains the tokenizer and the bigram weights on it; its ``recipe_hash`` covers this
  file, so a change here rebuilds the model.
"""

from __future__ import annotations


_NAMES = (
    "Tom Anna Lena Omar Mia Ravi Sara Ben Yuki Paul Nora Ivan Clara Diego Fatima Hugo Iris Jonas Kenji Laila "
    "Marco Nadia Oscar Priya Quentin Rosa Samir Tara Umar Vera Walter Xena Yusuf Zoe Elena Felix Greta Hassan "
    "Ingrid Jamal Kofi Lucia Mateo Nina Olga Pedro Rahul Sofia Theo Ursula Victor Wanda Amir Bianca Carlos Dana"
).split()
_ITEMS = (
    "apples books coins marbles pencils cookies stamps cards shells boxes bottles candles tickets flowers "
    "stickers buttons crayons oranges lemons eggs cupcakes plates cups bricks seeds pebbles ribbons balloons "
    "notebooks erasers batteries bananas carrots potatoes tomatoes peppers muffins sandwiches bracelets rings "
    "keys nails screws bolts beads feathers leaves stones puzzles toys blocks chairs tables lamps blankets"
).split()
_PLACES = (
    "market library school garden bakery station museum harbor park farm office kitchen village city "
    "river bridge forest beach island mountain valley factory store warehouse hospital stadium theater"
).split()
_VEHICLES = ["car", "bus", "train", "bike", "boat", "truck", "plane", "scooter"]
_JOBS = ["paint a fence", "build a wall", "fill a tank", "write a report", "clean the room", "sort the mail",
         "plant the trees", "pack the boxes", "wash the dishes", "mow the lawn", "fix the roof", "bake the bread"]
_VERBS_GAIN = ["buys", "finds", "gets", "receives", "picks up", "wins", "collects", "borrows", "makes", "earns"]
_VERBS_LOSE = ["gives away", "loses", "sells", "eats", "drops", "uses", "breaks", "donates", "trades", "returns"]
_ADJ = (
    "red blue green small large old new heavy light bright quiet careful quick slow happy tired busy "
    "simple tricky strange useful important different similar whole exact rough final correct wrong"
).split()
_OPENERS = [
    "Let me think step by step.",
    "Let me work through this carefully.",
    "First, I need to understand the problem.",
    "Okay, let me start with what we know.",
    "Let me break this down.",
    "Alright, I will go through the numbers one at a time.",
    "I should write down every quantity before computing anything.",
    "Let me restate the question in my own words.",
    "Hmm, this looks like a problem about rates.",
    "There are several parts here, so I will handle them in order.",
]
_CHECKS = [
    "Wait, let me check that again.",
    "Wait, that does not look right.",
    "Hmm, let me double check.",
    "Wait, I should verify this step.",
    "Let me recompute to be sure.",
    "Actually, I made a mistake earlier.",
    "Hold on, I think I mixed up the numbers.",
    "But wait, did I read the question correctly?",
    "Let me try a different approach to confirm.",
    "Maybe I should count again from the beginning.",
]
_FILLERS = [
    "This means the total changes.",
    "I need to keep track of each step.",
    "The order of the steps matters here.",
    "So far the numbers look consistent.",
    "Now I can combine the two results.",
    "That gives a new total.",
    "I will write the result down.",
    "Then I can move on to the next part.",
    "Notice that the question only asks about the final amount.",
    "It helps to think about what happens first and what happens later.",
    "Another way to see it is to draw a small table.",
    "The units have to match, otherwise the answer makes no sense.",
    "I should not forget the earlier change.",
    "Each part depends on the previous one.",
    "If I group the numbers differently, the sum stays the same.",
    "Multiplication is repeated addition, so this is consistent.",
    "The difference between the two values is what matters.",
    "A quick estimate says the answer should be close to this.",
    "Therefore the intermediate result is reasonable.",
    "In other words, nothing else changes in this step.",
]
_CLOSERS = ["So the answer is {a}.", "The answer is {a}.", "Therefore, the final answer is {a}.",
            "That means the result is {a}.", "In total, the answer is {a}."]


def _num(rng, lo: int, hi: int) -> int:
    return rng.randint(lo, hi)


def _p_items(rng):
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    adj = rng.choice(_ADJ)
    a = _num(rng, 2, 80)
    total, q, steps = a, [f"{name} has {a} {adj} {item} at the {rng.choice(_PLACES)}."], []
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.4:
            b, verb = _num(rng, 1, 50), rng.choice(_VERBS_GAIN)
            q.append(f"Then {name} {verb} {b} more {item}.")
            steps.append(f"{name} {verb} {b}, so {total} + {b} = {total + b}.")
            total += b
        elif kind < 0.75 and total > 1:
            b, verb = _num(rng, 1, total - 1), rng.choice(_VERBS_LOSE)
            q.append(f"Then {name} {verb} {b} {item}.")
            steps.append(f"{name} {verb} {b}, so {total} - {b} = {total - b}.")
            total -= b
        else:
            k = _num(rng, 2, 6)
            q.append(f"Then the number of {item} is multiplied by {k}.")
            steps.append(f"The {item} are multiplied by {k}, so {total} * {k} = {total * k}.")
            total *= k
    q.append(f"How many {item} does {name} have now?")
    start = f"{name} starts with {a} {item}."
    return " ".join(q), start, steps, f"{name} ends with {total} {item}.", total


def _p_travel(rng):
    name, veh = rng.choice(_NAMES), rng.choice(_VEHICLES)
    speed, hours = _num(rng, 3, 90), _num(rng, 2, 9)
    src, dst = rng.sample(_PLACES, 2)
    dist = speed * hours
    q = (f"{name} rides a {veh} from the {src} to the {dst} at {speed} km per hour. "
         f"The trip takes {hours} hours. How far is the {dst} from the {src}?")
    steps = [f"Distance is speed times time.", f"The speed is {speed} km per hour and the time is {hours} hours.",
             f"So {speed} * {hours} = {dist} km."]
    if rng.random() < 0.5:
        back = _num(rng, 1, hours)
        steps.append(f"If the way back takes {back} hours less, the return time is {hours} - {back} = {hours - back}.")
    return q, f"The trip starts at the {src}.", steps, f"The distance is {dist} km.", dist


def _p_price(rng):
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    n, price = _num(rng, 2, 20), _num(rng, 1, 25)
    paid = n * price + _num(rng, 0, 50)
    cost = n * price
    q = (f"At the {rng.choice(_PLACES)}, {item} cost {price} dollars each. {name} buys {n} {item} and pays with "
         f"{paid} dollars. How much change does {name} get?")
    steps = [f"The cost is {n} * {price} = {cost} dollars.", f"The change is {paid} - {cost} = {paid - cost} dollars."]
    if rng.random() < 0.4:
        steps.insert(1, f"{name} pays {paid} dollars, which is more than {cost}, so there is change.")
    return q, f"Each of the {item} costs {price} dollars.", steps, f"The change is {paid - cost} dollars.", paid - cost


def _p_work(rng):
    a_name, b_name = rng.sample(_NAMES, 2)
    job = rng.choice(_JOBS)
    a_rate, b_rate = _num(rng, 1, 9), _num(rng, 1, 9)
    hours = _num(rng, 2, 8)
    done = (a_rate + b_rate) * hours
    q = (f"{a_name} can {job} at {a_rate} units per hour and {b_name} works at {b_rate} units per hour. "
         f"They work together for {hours} hours. How many units do they finish?")
    steps = [f"Together they do {a_rate} + {b_rate} = {a_rate + b_rate} units per hour.",
             f"In {hours} hours they finish {a_rate + b_rate} * {hours} = {done} units."]
    return q, f"There are two workers, {a_name} and {b_name}.", steps, f"They finish {done} units.", done


def _p_share(rng):
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    friends, each = _num(rng, 2, 9), _num(rng, 2, 15)
    rest = _num(rng, 0, friends - 1)
    total = friends * each + rest
    q = (f"{name} has {total} {item} and shares them equally among {friends} friends. "
         f"How many {item} does each friend get, and how many are left over?")
    steps = [f"I divide {total} by {friends}.", f"{friends} * {each} = {friends * each}, which is at most {total}.",
             f"The remainder is {total} - {friends * each} = {rest}."]
    return q, f"There are {total} {item} in total.", steps, f"Each friend gets {each}, and {rest} are left.", each


def _p_age(rng):
    a_name, b_name = rng.sample(_NAMES, 2)
    a_age, diff, years = _num(rng, 5, 60), _num(rng, 1, 30), _num(rng, 1, 20)
    q = (f"{a_name} is {a_age} years old. {b_name} is {diff} years older than {a_name}. "
         f"How old will {b_name} be in {years} years?")
    steps = [f"{b_name} is {a_age} + {diff} = {a_age + diff} years old now.",
             f"In {years} years {b_name} will be {a_age + diff} + {years} = {a_age + diff + years}."]
    return q, f"{a_name} is {a_age} now.", steps, f"{b_name} will be {a_age + diff + years}.", a_age + diff + years


_PROBLEMS = [_p_items, _p_travel, _p_price, _p_work, _p_share, _p_age]


def _problem(rng) -> tuple[str, list[str], str, int]:
    """One word problem: (question, reasoning paragraphs, summary, answer)."""
    question, start, steps, summary, answer = rng.choice(_PROBLEMS)(rng)
    paras = [rng.choice(_OPENERS) + "\n" + start]
    for s in steps:
        body = s
        if rng.random() < 0.5:
            body += "\n" + rng.choice(_FILLERS)
        if rng.random() < 0.3:
            body += "\n" + rng.choice(_CHECKS) + "\n" + s + " Yes, that is correct."
        paras.append(body)
    return question, paras, summary, answer


def _document(rng, summaries: bool, chat: bool) -> str:
    question, paras, summary, answer = _problem(rng)
    out_paras = []
    for p in paras:
        out_paras.append(p)
        if summaries and rng.random() < 0.6:
            last = p.strip().split("\n")[-1]
            out_paras.append(f"<summary>{last}</summary>")
    think = "<think>\n" + "\n\n".join(out_paras) + "\n\n" + f"<summary>{summary}</summary>\n</think>\n\n"
    final = rng.choice(_CLOSERS).format(a=answer)
    if chat:
        sys_msg = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if rng.random() < 0.3 else ""
        return f"{sys_msg}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{think}{final}<|im_end|>\n"
    return f"{question}\n\n{think}{final}<|endoftext|>"


def corpus(n_docs: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        docs.append(_document(rng, summaries=rng.random() < 0.7, chat=rng.random() < 0.4))
    return docs
